//! Offline metrics on predicted probabilities, all with optional sample weights:
//! logloss, ROC AUC (ties count one half), PR AUC as average precision (scikit-learn's
//! `average_precision_score`), RCE = 100 (1 - CE(pred) / CE(ctr)) where ctr is the weighted mean
//! label of the same data (twml's relative cross entropy), calibration = mean(pred) / mean(label).

use crate::error::Result;
use crate::invalid;

const CLIP: f64 = 1e-15;

fn check(y: &[f32], p: &[f32], w: Option<&[f32]>, probabilities: bool) -> Result<()> {
    if y.len() != p.len() {
        return Err(invalid!("y_true has {} entries but the predictions have {}", y.len(), p.len()));
    }
    if y.is_empty() {
        return Err(invalid!("metrics need at least one sample"));
    }
    if let Some(w) = w {
        if w.len() != y.len() {
            return Err(invalid!("sample_weight has {} entries for {} samples", w.len(), y.len()));
        }
        if let Some(i) = w.iter().position(|s| !(s.is_finite() && *s >= 0.0)) {
            return Err(invalid!("sample_weight[{i}] = {} is not a finite number >= 0", w[i]));
        }
        if !w.iter().any(|&s| s > 0.0) {
            return Err(invalid!("all sample weights are 0"));
        }
    }
    if let Some(i) = y.iter().position(|&t| t != 0.0 && t != 1.0) {
        return Err(invalid!("y_true[{i}] = {}: labels must be 0 or 1", y[i]));
    }
    if let Some(i) = p.iter().position(|&q| !q.is_finite() || (probabilities && !(0.0..=1.0).contains(&q))) {
        return Err(invalid!("prediction [{i}] = {} is not {}", p[i], if probabilities { "a probability in [0, 1]" } else { "finite" }));
    }
    Ok(())
}

fn weight(w: Option<&[f32]>, i: usize) -> f64 {
    w.map_or(1.0, |w| w[i] as f64)
}

fn cross_entropy(y: &[f32], p: impl Fn(usize) -> f64, w: Option<&[f32]>) -> f64 {
    let (mut loss, mut total) = (0.0, 0.0);
    for (i, &t) in y.iter().enumerate() {
        let q = p(i).clamp(CLIP, 1.0 - CLIP);
        let s = weight(w, i);
        loss -= s * if t == 1.0 { q.ln() } else { (1.0 - q).ln() };
        total += s;
    }
    loss / total
}

pub fn logloss(y: &[f32], p: &[f32], w: Option<&[f32]>) -> Result<f64> {
    check(y, p, w, true)?;
    Ok(cross_entropy(y, |i| p[i] as f64, w))
}

fn mean_label(y: &[f32], w: Option<&[f32]>) -> f64 {
    let total: f64 = (0..y.len()).map(|i| weight(w, i)).sum();
    (0..y.len()).map(|i| weight(w, i) * y[i] as f64).sum::<f64>() / total
}

pub fn rce(y: &[f32], p: &[f32], w: Option<&[f32]>) -> Result<f64> {
    check(y, p, w, true)?;
    let ctr = mean_label(y, w);
    if ctr <= 0.0 || ctr >= 1.0 {
        return Err(invalid!("RCE is undefined when y_true holds only one class"));
    }
    let baseline = cross_entropy(y, |_| ctr, w);
    Ok(100.0 * (1.0 - cross_entropy(y, |i| p[i] as f64, w) / baseline))
}

pub fn calibration(y: &[f32], p: &[f32], w: Option<&[f32]>) -> Result<f64> {
    check(y, p, w, true)?;
    let total: f64 = (0..y.len()).map(|i| weight(w, i)).sum();
    let mean_p = (0..y.len()).map(|i| weight(w, i) * p[i] as f64).sum::<f64>() / total;
    let ctr = mean_label(y, w);
    if ctr <= 0.0 {
        return Err(invalid!("calibration is undefined when no label is positive"));
    }
    Ok(mean_p / ctr)
}

/// Groups of equal score in descending order: (positive weight, negative weight) per group.
fn descending_groups(y: &[f32], score: &[f32], w: Option<&[f32]>) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..y.len()).collect();
    order.sort_unstable_by(|&a, &b| score[b].total_cmp(&score[a]));
    let mut groups: Vec<(f64, f64)> = Vec::new();
    let mut last = None;
    for i in order {
        let s = weight(w, i);
        let (pos, neg) = if y[i] == 1.0 { (s, 0.0) } else { (0.0, s) };
        if last == Some(score[i]) {
            let g = groups.last_mut().unwrap();
            g.0 += pos;
            g.1 += neg;
        } else {
            groups.push((pos, neg));
            last = Some(score[i]);
        }
    }
    groups
}

fn both_classes(groups: &[(f64, f64)]) -> Result<(f64, f64)> {
    let pos: f64 = groups.iter().map(|g| g.0).sum();
    let neg: f64 = groups.iter().map(|g| g.1).sum();
    if pos <= 0.0 || neg <= 0.0 {
        return Err(invalid!("AUC is undefined when y_true holds only one class"));
    }
    Ok((pos, neg))
}

pub fn roc_auc(y: &[f32], score: &[f32], w: Option<&[f32]>) -> Result<f64> {
    check(y, score, w, false)?;
    let groups = descending_groups(y, score, w);
    let (pos, neg) = both_classes(&groups)?;
    // Walk from the lowest score up: each positive beats the negatives below it, ties count 1/2.
    let mut neg_below = 0.0;
    let mut area = 0.0;
    for &(p, n) in groups.iter().rev() {
        area += p * (neg_below + 0.5 * n);
        neg_below += n;
    }
    Ok(area / (pos * neg))
}

pub fn pr_auc(y: &[f32], score: &[f32], w: Option<&[f32]>) -> Result<f64> {
    check(y, score, w, false)?;
    let groups = descending_groups(y, score, w);
    let (pos, _) = both_classes(&groups)?;
    let (mut tp, mut fp, mut ap, mut last_recall) = (0.0, 0.0, 0.0, 0.0);
    for &(p, n) in &groups {
        tp += p;
        fp += n;
        let recall = tp / pos;
        ap += (recall - last_recall) * tp / (tp + fp);
        last_recall = recall;
    }
    Ok(ap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases() {
        let y = [0.0, 0.0, 1.0, 1.0];
        let s = [0.1, 0.4, 0.35, 0.8];
        assert!((roc_auc(&y, &s, None).unwrap() - 0.75).abs() < 1e-12);
        // scikit-learn: average_precision_score([0,0,1,1],[.1,.4,.35,.8]) = 0.8333...
        assert!((pr_auc(&y, &s, None).unwrap() - 0.8333333333333333).abs() < 1e-12);
        assert!((roc_auc(&y, &[0.5; 4], None).unwrap() - 0.5).abs() < 1e-12);
        assert!(rce(&y, &[0.5; 4], None).unwrap().abs() < 1e-9);
        assert!((calibration(&y, &[0.25; 4], None).unwrap() - 0.5).abs() < 1e-12);
        assert!(roc_auc(&[1.0, 1.0], &[0.1, 0.2], None).is_err());
        assert!(rce(&[1.0, 1.0], &[0.1, 0.2], None).is_err());
        assert!(logloss(&y, &[0.5; 4], Some(&[0.0; 4])).is_err());
        assert!(logloss(&y, &[0.5, 0.5, 2.0, 0.5], None).is_err());
        let ll = logloss(&[1.0], &[0.5], None).unwrap();
        assert!((ll - std::f64::consts::LN_2).abs() < 1e-12);
    }
}
