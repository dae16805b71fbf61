//! The host side of a GPU batch: the rows' non-zeros in batch order plus their transpose grouped by
//! distinct feature (in batch order inside a feature), built on the CPU while the device trains the
//! previous batch. The grouping is what lets every per-feature reduction on the device (running
//! max_abs, row gradient, feature-bias gradient) be one warp's job, with no atomics on hot rows.

use crate::data::{CsrView, Idx};
use crate::model::workspace::RowSlots;

#[derive(Default, Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub n_rows: usize,
    /// `row_ptr[b]..row_ptr[b + 1]` are row b's entries.
    pub row_ptr: Vec<i32>,
    pub entry_row: Vec<i32>,
    /// Index of each entry's feature among `slot_id`.
    pub entry_slot: Vec<i32>,
    pub values: Vec<f32>,
    /// Distinct feature ids, in order of first appearance.
    pub slot_id: Vec<i64>,
    /// `slot_entries[slot_ptr[s]..slot_ptr[s + 1]]`: entries of feature s, in batch order.
    pub slot_ptr: Vec<i32>,
    pub slot_entries: Vec<i32>,
    pub targets: Vec<f32>,
    pub weights: Vec<f32>,
}

impl HostBatch {
    /// Rows `rows` of `x` (in this order) with their targets and weights (1 when absent).
    pub fn build<P: Idx, I: Idx>(
        &mut self,
        x: &CsrView<'_, P, I>,
        rows: &[u32],
        targets: &[f32],
        weights: Option<&[f32]>,
        slots: &mut RowSlots,
    ) {
        let nnz: usize = rows.iter().map(|&r| x.row(r as usize).0.len()).sum();
        self.n_rows = rows.len();
        self.row_ptr.clear();
        self.entry_row.clear();
        self.entry_slot.clear();
        self.values.clear();
        self.targets.clear();
        self.weights.clear();
        slots.reset();
        self.row_ptr.push(0);
        for (b, &r) in rows.iter().enumerate() {
            let (ids, values) = x.row(r as usize);
            for &id in ids {
                self.entry_slot.push(slots.slot_of(id.as_usize() as u64).0 as i32);
                self.entry_row.push(b as i32);
            }
            self.values.extend_from_slice(values);
            self.row_ptr.push(self.values.len() as i32);
            self.targets.push(targets[r as usize]);
            self.weights.push(weights.map_or(1.0, |w| w[r as usize]));
        }
        self.slot_id.clear();
        self.slot_id.extend(slots.ids.iter().map(|&id| id as i64));
        // Counting sort of the entries by slot: stable, so batch order holds inside a slot.
        let n_slots = self.slot_id.len();
        self.slot_ptr.clear();
        self.slot_ptr.resize(n_slots + 1, 0);
        for &s in &self.entry_slot {
            self.slot_ptr[s as usize + 1] += 1;
        }
        for s in 0..n_slots {
            self.slot_ptr[s + 1] += self.slot_ptr[s];
        }
        self.slot_entries.clear();
        self.slot_entries.resize(nnz, 0);
        let mut next: Vec<i32> = self.slot_ptr[..n_slots].to_vec();
        for (k, &s) in self.entry_slot.iter().enumerate() {
            self.slot_entries[next[s as usize] as usize] = k as i32;
            next[s as usize] += 1;
        }
    }

    pub fn nnz(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_groups_entries_by_feature_in_batch_order() {
        // Row 0: ids 5, 2, 5 (a duplicate); row 1: empty; row 2: 2; row 3: 9, 5.
        let indptr = [0i64, 3, 3, 4, 6];
        let indices = [5i64, 2, 5, 2, 9, 5];
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let x = CsrView::new(&indptr, &indices, &values, 10).unwrap();
        let mut batch = HostBatch::default();
        let mut slots = RowSlots::default();
        batch.build(&x, &[3, 0, 1, 2], &[1.0, 0.0, 1.0, 0.0], Some(&[0.5, 1.0, 2.0, 3.0]), &mut slots);
        assert_eq!(batch.row_ptr, vec![0, 2, 5, 5, 6]);
        assert_eq!(batch.values, vec![5.0, 6.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(batch.entry_row, vec![0, 0, 1, 1, 1, 3]);
        assert_eq!(batch.slot_id, vec![9, 5, 2]);
        assert_eq!(batch.entry_slot, vec![0, 1, 1, 2, 1, 2]);
        assert_eq!(batch.slot_ptr, vec![0, 1, 4, 6]);
        assert_eq!(batch.slot_entries, vec![0, 1, 2, 4, 3, 5]);
        assert_eq!(batch.targets, vec![0.0, 1.0, 0.0, 1.0]);
        assert_eq!(batch.weights, vec![3.0, 0.5, 1.0, 2.0]);
        // Reused buffers give the same result for a smaller batch.
        batch.build(&x, &[2], &[1.0, 0.0, 1.0, 0.0], None, &mut slots);
        assert_eq!((batch.slot_id.clone(), batch.slot_ptr.clone(), batch.slot_entries.clone()), (vec![2], vec![0, 1], vec![0]));
        assert_eq!(batch.weights, vec![1.0]);
    }
}
