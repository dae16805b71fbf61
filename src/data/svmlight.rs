//! svmlight / libsvm text: `label [qid:N] id:value ... [# comment]`, one row per line.
//! This is the simple sequential reader; errors name the line (1-based) and the token.

use super::csr::OwnedCsr;
use crate::error::Result;
use crate::invalid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdBase {
    Zero,
    One,
    /// One-based unless some id is 0 (scikit-learn's rule).
    Auto,
}

#[derive(Debug)]
pub struct SvmlightData {
    pub matrix: OwnedCsr,
    pub labels: Vec<f32>,
}

/// Parses a whole svmlight document. `n_features = None` takes the largest id + 1.
pub fn parse_svmlight(text: &[u8], n_features: Option<usize>, base: IdBase) -> Result<SvmlightData> {
    let mut indptr = vec![0i64];
    let mut indices: Vec<i64> = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    let mut labels = Vec::new();
    let mut min_id = i64::MAX;
    let mut max_id = -1i64;
    let mut max_id_line = 0;

    for (line_no, raw_line) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = line_no + 1;
        let line = match raw_line.iter().position(|&b| b == b'#') {
            Some(p) => &raw_line[..p],
            None => raw_line,
        };
        let line = std::str::from_utf8(line).map_err(|_| invalid!("line {line_no}: not valid UTF-8 text"))?;
        let mut tokens = line.split_ascii_whitespace();
        let Some(label_token) = tokens.next() else { continue };
        let label: f32 = label_token
            .parse()
            .ok()
            .filter(|l: &f32| l.is_finite())
            .ok_or_else(|| invalid!("line {line_no}: label '{label_token}' is not a finite number"))?;
        for token in tokens {
            let (key, value) = token
                .split_once(':')
                .ok_or_else(|| invalid!("line {line_no}: token '{token}' is not of the form id:value"))?;
            if key == "qid" {
                continue;
            }
            let id: i64 = key
                .parse()
                .map_err(|_| invalid!("line {line_no}: feature id '{key}' in '{token}' is not an integer"))?;
            if id < 0 {
                return Err(invalid!("line {line_no}: feature id {id} is negative"));
            }
            let v: f32 = value
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| invalid!("line {line_no}: value '{value}' of feature {id} is not a finite number"))?;
            min_id = min_id.min(id);
            if id > max_id {
                max_id = id;
                max_id_line = line_no;
            }
            indices.push(id);
            values.push(v);
        }
        labels.push(label);
        indptr.push(indices.len() as i64);
    }

    let one_based = match base {
        IdBase::Zero => false,
        IdBase::One => true,
        IdBase::Auto => min_id != 0,
    };
    let written_max_id = max_id;
    if one_based {
        if min_id == 0 {
            return Err(invalid!("feature id 0 found in a file read as one-based (use zero_based=True)"));
        }
        indices.iter_mut().for_each(|id| *id -= 1);
        max_id -= 1;
    }
    // No `max_id + 1`: it overflows for the id i64::MAX.
    let needed = if max_id < 0 { 0 } else { usize::try_from(max_id).unwrap_or(usize::MAX).saturating_add(1) };
    let n_features = match n_features {
        Some(0) => return Err(invalid!("n_features must be at least 1, got 0")),
        Some(n) if n < needed => {
            let base = if one_based { "one-based" } else { "zero-based" };
            return Err(invalid!(
                "line {max_id_line}: feature id {written_max_id} ({base}) does not fit n_features={n}"
            ));
        }
        Some(n) => n,
        None => needed.max(1),
    };
    Ok(SvmlightData { matrix: OwnedCsr { indptr, indices, values, n_features }, labels })
}

pub fn read_svmlight(path: &std::path::Path, n_features: Option<usize>, base: IdBase) -> Result<SvmlightData> {
    let bytes = std::fs::read(path).map_err(|e| crate::error::Error::Io(format!("{}: {e}", path.display())))?;
    parse_svmlight(&bytes, n_features, base).map_err(|e| match e {
        crate::error::Error::InvalidInput(m) => invalid!("{}: {m}", path.display()),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_qid_and_bases() {
        let text = b"+1 qid:3 1:0.5 3:2 # a comment\n# whole line comment\n-1\n0 2:1e6\n";
        let d = parse_svmlight(text, None, IdBase::Auto).unwrap();
        assert_eq!(d.labels, vec![1.0, -1.0, 0.0]);
        assert_eq!(d.matrix.indptr, vec![0, 2, 2, 3]);
        assert_eq!(d.matrix.indices, vec![0, 2, 1]);
        assert_eq!(d.matrix.values, vec![0.5, 2.0, 1e6]);
        assert_eq!(d.matrix.n_features, 3);
        let z = parse_svmlight(text, Some(10), IdBase::Zero).unwrap();
        assert_eq!(z.matrix.indices, vec![1, 3, 2]);
        assert_eq!(z.matrix.n_features, 10);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_svmlight(b"1 1:2\n1 3:abc\n", None, IdBase::Auto).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse_svmlight(b"1 1:2\nx 3:1\n", None, IdBase::Auto).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse_svmlight(b"1 12\n", None, IdBase::Auto).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse_svmlight(b"1 5:nan\n", None, IdBase::Auto).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = parse_svmlight(b"1 2:1\n1 9:1\n", Some(3), IdBase::Auto).unwrap_err();
        assert!(e.to_string().contains("line 2") && e.to_string().contains("id 9"), "{e}");
    }
}
