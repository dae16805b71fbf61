//! The host side of a GPU batch: the rows' non-zeros in batch order plus their transpose grouped by
//! distinct feature (in batch order inside a feature), built on the CPU while the device trains the
//! previous batch. The grouping is what lets every per-feature reduction on the device (running
//! max_abs, row gradient, feature-bias gradient) be done without atomics on hot rows: each feature's
//! entries are cut into chunks of at most `CHUNK` (one warp's work each); a feature with one chunk
//! is finished by that warp, a hot feature (in more than `CHUNK` rows of the batch) gets partial
//! results per chunk, which one warp per hot feature then combines. Every array is also packed into
//! one buffer of 4-byte words (`pack`), so a batch goes to the device in one copy.

use crate::data::{CsrView, Idx};
use crate::model::workspace::{group_by_slot, RowSlots};

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
    /// Work items: chunk c covers `slot_entries[chunk_begin[c]..]` up to `CHUNK` entries or the
    /// end of its feature `chunk_slot[c]`; `chunk_partial[c]` is its index among the chunks of
    /// hot features (-1 for a feature with one chunk). A feature's chunks are consecutive, in
    /// batch order, and so are their partial indices.
    pub chunk_slot: Vec<i32>,
    pub chunk_begin: Vec<i32>,
    pub chunk_partial: Vec<i32>,
    /// Hot features (more than one chunk) and the partial index of each one's first chunk.
    pub hot_slot: Vec<i32>,
    pub hot_partial: Vec<i32>,
    pub n_partials: usize,
}

/// Entries per work item: one per lane of a warp.
pub const CHUNK: usize = 32;

/// Where each array of a batch starts in its packed buffer, in 4-byte words (`slot_id`, 8-byte
/// ids, comes first, at offset 0, so it stays 8-byte aligned).
#[derive(Default, Debug, Clone, Copy, PartialEq)]
pub struct Packed {
    pub row_ptr: usize,
    pub entry_row: usize,
    pub entry_slot: usize,
    pub values: usize,
    pub slot_ptr: usize,
    pub slot_entries: usize,
    pub targets: usize,
    pub weights: usize,
    pub chunk_slot: usize,
    pub chunk_begin: usize,
    pub chunk_partial: usize,
    pub hot_slot: usize,
    pub hot_partial: usize,
    pub words: usize,
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
        self.slot_entries.clear();
        self.slot_entries.resize(nnz, 0);
        let slot_entries = &mut self.slot_entries;
        let slots = self.entry_slot.iter().map(|&s| s as usize);
        group_by_slot(slots, self.slot_id.len(), &mut self.slot_ptr, &mut Vec::new(), |k, at| slot_entries[at] = k as i32);
        self.build_chunks();
    }

    fn build_chunks(&mut self) {
        self.chunk_slot.clear();
        self.chunk_begin.clear();
        self.chunk_partial.clear();
        self.hot_slot.clear();
        self.hot_partial.clear();
        let mut n_partials = 0i32;
        for (s, bounds) in self.slot_ptr.windows(2).enumerate() {
            let (start, end) = (bounds[0], bounds[1]);
            let hot = (end - start) as usize > CHUNK;
            if hot {
                self.hot_slot.push(s as i32);
                self.hot_partial.push(n_partials);
            }
            for begin in (start..end).step_by(CHUNK) {
                self.chunk_slot.push(s as i32);
                self.chunk_begin.push(begin);
                self.chunk_partial.push(if hot { n_partials } else { -1 });
                n_partials += hot as i32;
            }
        }
        self.n_partials = n_partials as usize;
    }

    /// Every array of the batch, one after the other, as 4-byte words into `out` (which must hold
    /// `self.packed_words()`); returns where each starts.
    pub fn pack(&self, out: &mut [u32]) -> Packed {
        let mut w = Words { out, at: 0 };
        for &id in &self.slot_id {
            w.put(&[id as u64 as u32, (id as u64 >> 32) as u32]);
        }
        Packed {
            row_ptr: w.ints(&self.row_ptr),
            entry_row: w.ints(&self.entry_row),
            entry_slot: w.ints(&self.entry_slot),
            values: w.floats(&self.values),
            slot_ptr: w.ints(&self.slot_ptr),
            slot_entries: w.ints(&self.slot_entries),
            targets: w.floats(&self.targets),
            weights: w.floats(&self.weights),
            chunk_slot: w.ints(&self.chunk_slot),
            chunk_begin: w.ints(&self.chunk_begin),
            chunk_partial: w.ints(&self.chunk_partial),
            hot_slot: w.ints(&self.hot_slot),
            hot_partial: w.ints(&self.hot_partial),
            words: w.at,
        }
    }

    /// Words `pack` writes.
    pub fn packed_words(&self) -> usize {
        2 * self.slot_id.len()
            + self.row_ptr.len()
            + 4 * self.nnz()
            + self.slot_ptr.len()
            + 2 * self.n_rows
            + 3 * self.chunk_slot.len()
            + 2 * self.hot_slot.len()
    }

    pub fn nnz(&self) -> usize {
        self.values.len()
    }
}

/// A cursor writing 4-byte words.
struct Words<'a> {
    out: &'a mut [u32],
    at: usize,
}

impl Words<'_> {
    fn put(&mut self, words: &[u32]) -> usize {
        let start = self.at;
        self.out[start..start + words.len()].copy_from_slice(words);
        self.at += words.len();
        start
    }

    fn ints(&mut self, v: &[i32]) -> usize {
        let start = self.at;
        for (o, &x) in self.out[start..start + v.len()].iter_mut().zip(v) {
            *o = x as u32;
        }
        self.at += v.len();
        start
    }

    fn floats(&mut self, v: &[f32]) -> usize {
        let start = self.at;
        for (o, x) in self.out[start..start + v.len()].iter_mut().zip(v) {
            *o = x.to_bits();
        }
        self.at += v.len();
        start
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
        // Every feature here has one chunk.
        assert_eq!((batch.chunk_slot.clone(), batch.chunk_begin.clone()), (vec![0, 1, 2], vec![0, 1, 4]));
        assert_eq!((batch.chunk_partial.clone(), batch.hot_slot.len(), batch.n_partials), (vec![-1, -1, -1], 0, 0));
        let mut words = vec![0u32; batch.packed_words()];
        let at = batch.pack(&mut words);
        assert_eq!(at.words, words.len());
        assert_eq!(&words[..6], &[9, 0, 5, 0, 2, 0]);
        assert_eq!(&words[at.row_ptr..at.row_ptr + 5], &[0, 2, 5, 5, 6]);
        assert_eq!(f32::from_bits(words[at.values + 1]), 6.0);
        assert_eq!(f32::from_bits(words[at.weights]), 3.0);
        assert_eq!(&words[at.chunk_partial..at.chunk_partial + 3], &[u32::MAX; 3]);
        // Reused buffers give the same result for a smaller batch.
        batch.build(&x, &[2], &[1.0, 0.0, 1.0, 0.0], None, &mut slots);
        assert_eq!((batch.slot_id.clone(), batch.slot_ptr.clone(), batch.slot_entries.clone()), (vec![2], vec![0, 1], vec![0]));
        assert_eq!(batch.weights, vec![1.0]);
    }

    #[test]
    fn hot_features_are_cut_into_chunks_with_consecutive_partials() {
        // Feature 7 in all 70 rows (3 chunks: 32 + 32 + 6), feature 1 in the first 33 (2 chunks),
        // feature 4 in row 5 only.
        let mut indptr = vec![0i64];
        let (mut indices, mut values) = (vec![], vec![]);
        for r in 0..70 {
            indices.push(7i64);
            if r < 33 {
                indices.push(1);
            }
            if r == 5 {
                indices.push(4);
            }
            values.resize(indices.len(), 1.0f32);
            indptr.push(indices.len() as i64);
        }
        let x = CsrView::new(&indptr, &indices, &values, 10).unwrap();
        let rows: Vec<u32> = (0..70).collect();
        let mut batch = HostBatch::default();
        batch.build(&x, &rows, &[0.0; 70], None, &mut RowSlots::default());
        assert_eq!(batch.slot_id, vec![7, 1, 4]);
        assert_eq!(batch.chunk_slot, vec![0, 0, 0, 1, 1, 2]);
        assert_eq!(batch.chunk_begin, vec![0, 32, 64, 70, 102, 103]);
        assert_eq!(batch.chunk_partial, vec![0, 1, 2, 3, 4, -1]);
        assert_eq!((batch.hot_slot.clone(), batch.hot_partial.clone(), batch.n_partials), (vec![0, 1], vec![0, 3], 5));
        let mut words = vec![0u32; batch.packed_words()];
        assert_eq!(batch.pack(&mut words).words, words.len());
    }
}
