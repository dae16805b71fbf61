//! Borrowed CSR matrices, validated once so the training loop can trust them.

use crate::error::{Error, Result};
use crate::invalid;

/// An integer type that numpy hands us for `indptr` or `indices` (int32 or int64), taken as is so
/// the arrays are borrowed, not copied.
pub trait Idx: Copy + Send + Sync + std::fmt::Display + 'static {
    fn as_i64(self) -> i64;
    /// For values already validated to be in range.
    #[inline(always)]
    fn as_usize(self) -> usize {
        self.as_i64() as usize
    }
}

impl Idx for i32 {
    #[inline(always)]
    fn as_i64(self) -> i64 {
        self as i64
    }
}

impl Idx for i64 {
    #[inline(always)]
    fn as_i64(self) -> i64 {
        self
    }
}

impl Idx for u32 {
    #[inline(always)]
    fn as_i64(self) -> i64 {
        self as i64
    }
}

/// A CSR matrix borrowed from the caller: rows may be empty, ids may repeat and need not be
/// sorted. Construction validates everything the kernels rely on.
#[derive(Clone, Copy, Debug)]
pub struct CsrView<'a, P: Idx = i64, I: Idx = i64> {
    indptr: &'a [P],
    indices: &'a [I],
    values: &'a [f32],
    n_features: usize,
}

impl<'a, P: Idx, I: Idx> CsrView<'a, P, I> {
    pub fn new(indptr: &'a [P], indices: &'a [I], values: &'a [f32], n_features: usize) -> Result<Self> {
        if n_features == 0 {
            return Err(invalid!("n_features must be at least 1"));
        }
        if indptr.is_empty() {
            return Err(invalid!("indptr is empty: a CSR matrix with n rows has an indptr of n + 1 entries"));
        }
        if indices.len() != values.len() {
            return Err(invalid!(
                "indices has {} entries but values has {}: they must have the same length",
                indices.len(),
                values.len()
            ));
        }
        if indptr[0].as_i64() != 0 {
            return Err(invalid!("indptr[0] is {}, it must be 0", indptr[0]));
        }
        for (row, pair) in indptr.windows(2).enumerate() {
            if pair[1].as_i64() < pair[0].as_i64() {
                return Err(invalid!(
                    "indptr is not monotone at row {row}: indptr[{}] = {} < indptr[{row}] = {}",
                    row + 1,
                    pair[1],
                    pair[0]
                ));
            }
        }
        let last = indptr[indptr.len() - 1].as_i64();
        if last != indices.len() as i64 {
            return Err(invalid!(
                "indptr ends at {last} but there are {} non-zeros (indices/values length)",
                indices.len()
            ));
        }
        let view = Self { indptr, indices, values, n_features };
        view.check_entries()?;
        Ok(view)
    }

    fn check_entries(&self) -> Result<()> {
        // Compared as u64: an n_features above i64::MAX must not wrap to a negative bound.
        let n = self.n_features as u64;
        for row in 0..self.n_rows() {
            let (ids, vals) = self.row(row);
            for (pos, (&id, &v)) in ids.iter().zip(vals).enumerate() {
                let id = id.as_i64();
                if id < 0 || id as u64 >= n {
                    return Err(invalid!(
                        "row {row}: feature id (column) {id} at position {pos} is out of range [0, {n})"
                    ));
                }
                if !v.is_finite() {
                    return Err(invalid!("row {row}, column {id}: value {v} is not finite"));
                }
            }
        }
        Ok(())
    }

    #[inline]
    pub fn n_rows(&self) -> usize {
        self.indptr.len() - 1
    }

    #[inline]
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    #[inline]
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Hints the CPU to bring the start of `row`'s pointer into cache (for `prefetch_row` later).
    #[inline(always)]
    pub fn prefetch_row_pointer(&self, row: usize) {
        crate::train::shared::prefetch_slice(&self.indptr[row..row + 1]);
    }

    /// Hints the CPU to bring `row`'s ids and values into cache: the rows of a shuffled batch
    /// are scattered over the whole matrix.
    #[inline(always)]
    pub fn prefetch_row(&self, row: usize) {
        let (ids, values) = self.row(row);
        crate::train::shared::prefetch_slice(ids);
        crate::train::shared::prefetch_slice(values);
    }

    /// Feature ids and values of one row.
    #[inline]
    pub fn row(&self, row: usize) -> (&'a [I], &'a [f32]) {
        let start = self.indptr[row].as_usize();
        let end = self.indptr[row + 1].as_usize();
        (&self.indices[start..end], &self.values[start..end])
    }
}

/// An owned CSR matrix with int64 row pointers and int32 or wider ids; what readers and the
/// synthetic generator produce.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnedCsr {
    pub indptr: Vec<i64>,
    pub indices: Vec<i64>,
    pub values: Vec<f32>,
    pub n_features: usize,
}

impl OwnedCsr {
    pub fn view(&self) -> Result<CsrView<'_, i64, i64>> {
        CsrView::new(&self.indptr, &self.indices, &self.values, self.n_features)
    }

    pub fn n_rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }
}

/// What the targets mean, which decides the loss and the label check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Labels in {0, 1}, sigmoid + binary cross-entropy.
    Binary,
    /// Real targets, identity output + squared error.
    Regression,
}

pub fn validate_targets(y: &[f32], n_rows: usize, task: Task) -> Result<()> {
    if y.len() != n_rows {
        return Err(invalid!("X has {n_rows} rows but y has {} entries", y.len()));
    }
    for (row, &t) in y.iter().enumerate() {
        if !t.is_finite() {
            return Err(invalid!("label of row {row} is {t}: labels must be finite"));
        }
        if task == Task::Binary && t != 0.0 && t != 1.0 {
            return Err(invalid!("label of row {row} is {t}: a binary classifier takes labels 0 or 1"));
        }
    }
    Ok(())
}

pub fn validate_weights(w: &[f32], n_rows: usize) -> Result<()> {
    if w.len() != n_rows {
        return Err(invalid!("X has {n_rows} rows but sample_weight has {} entries", w.len()));
    }
    for (row, &s) in w.iter().enumerate() {
        if !s.is_finite() || s < 0.0 {
            return Err(invalid!("sample_weight of row {row} is {s}: weights must be finite and >= 0"));
        }
    }
    Ok(())
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_empty_rows_duplicates_unsorted() {
        let indptr = [0i64, 0, 3, 3];
        let indices = [5i32, 1, 5];
        let values = [1.0f32, -2.0, 3.0];
        let m = CsrView::new(&indptr[..], &indices[..], &values[..], 6).unwrap();
        assert_eq!(m.n_rows(), 3);
        assert_eq!(m.row(0).0.len(), 0);
        assert_eq!(m.row(1).0, &[5, 1, 5]);
    }

    #[test]
    fn errors_name_the_row() {
        let e = CsrView::new(&[0i64, 2, 1][..], &[0i64, 1][..], &[1.0, 1.0][..], 4).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        let e = CsrView::new(&[0i64, 1, 2][..], &[0i64, 9][..], &[1.0, 1.0][..], 4).unwrap_err();
        assert!(e.to_string().contains("row 1") && e.to_string().contains("9"), "{e}");
        let e = CsrView::new(&[0i64, 1][..], &[-1i32][..], &[1.0][..], 4).unwrap_err();
        assert!(e.to_string().contains("-1"), "{e}");
        let e = CsrView::new(&[0i64, 1][..], &[0i64][..], &[f32::NAN][..], 4).unwrap_err();
        assert!(e.to_string().contains("not finite"), "{e}");
        assert!(CsrView::new(&[0i64, 1][..], &[0i64][..], &[1.0][..], 0).is_err());
        assert!(CsrView::new(&[1i64, 1][..], &[0i64][..], &[1.0][..], 4).is_err());
        assert!(CsrView::new(&[0i64, 2][..], &[0i64][..], &[1.0][..], 4).is_err());
    }

    #[test]
    fn label_checks() {
        assert!(validate_targets(&[0.0, 1.0], 2, Task::Binary).is_ok());
        assert!(validate_targets(&[0.0, 2.0], 2, Task::Binary).unwrap_err().to_string().contains("row 1"));
        assert!(validate_targets(&[0.5, 2.0], 2, Task::Regression).is_ok());
        assert!(validate_targets(&[f32::INFINITY], 1, Task::Regression).is_err());
        assert!(validate_targets(&[0.0], 2, Task::Binary).is_err());
        assert!(validate_weights(&[1.0, -1.0], 2).is_err());
    }
}
