//! svmlight / libsvm documents in memory: `label [qid:N] id:value ... [# comment]` per line.
//! The line parser lives in `readers::svmlight`; errors name the line (1-based) and the token.

use super::csr::OwnedCsr;
use super::readers::{parse_block, svmlight::SvmlightParser};
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

/// Parses a whole svmlight document (in parallel). `n_features = None` takes the largest id + 1.
pub fn parse_svmlight(text: &[u8], n_features: Option<usize>, base: IdBase) -> Result<SvmlightData> {
    // First the raw ids as written, then the base shift, which for `Auto` depends on them all.
    let raw = parse_block(&SvmlightParser { shift: 0, n_features: None }, text, 1)?;
    let min_id = raw.min_id.unwrap_or(i64::MAX);
    let (max_id, max_id_line) = raw.max_id.unwrap_or((-1, 0));
    let one_based = match base {
        IdBase::Zero => false,
        IdBase::One => true,
        IdBase::Auto => min_id != 0,
    };
    let shift = one_based as i64;
    if one_based && min_id == 0 {
        return Err(invalid!("feature id 0 found in a file read as one-based (use zero_based=True)"));
    }
    // No `max_id + 1`: it overflows for the id i64::MAX.
    let needed = if max_id < shift { 0 } else { usize::try_from(max_id - shift).unwrap_or(usize::MAX).saturating_add(1) };
    let n_features = match n_features {
        Some(0) => return Err(invalid!("n_features must be at least 1, got 0")),
        Some(n) if n < needed => {
            let base = if one_based { "one-based" } else { "zero-based" };
            return Err(invalid!("line {max_id_line}: feature id {max_id} ({base}) does not fit n_features={n}"));
        }
        Some(n) => n,
        None => needed.max(1),
    };
    let (mut matrix, labels, _) = raw.into_csr(n_features);
    if shift != 0 {
        matrix.indices.iter_mut().for_each(|id| *id -= shift);
    }
    Ok(SvmlightData { matrix, labels })
}

pub fn read_svmlight(path: &std::path::Path, n_features: Option<usize>, base: IdBase) -> Result<SvmlightData> {
    let bytes = std::fs::read(path).map_err(|e| crate::error::Error::Io(format!("{}: {e}", path.display())))?;
    parse_svmlight(&bytes, n_features, base).map_err(|e| super::readers::in_file(path, e))
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
