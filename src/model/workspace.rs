//! Per-thread scratch memory for one batch: reused across batches so the hot loop allocates
//! nothing once buffers have grown to the largest batch seen.

/// Maps the feature ids of a batch to dense slots 0..n_unique (insertion order), so gradients
/// of a hot feature that appears in most rows are summed into one row and the optimizer touches
/// each row once. Open addressing with linear probing over cells holding both key and slot (one
/// cache line per probe, prefetchable ahead with `prefetch`); the table is sized by the number of
/// distinct ids (load at most 1/2, grown by rehashing), not by the number of non-zeros, so a
/// 512-row batch's table stays within the L2 cache. Cleared by visiting only the used cells.
///
/// A cell is 8 bytes: the id's low 32 bits and the slot (16-byte cells, with the whole id, made
/// the table of a 512-row batch 1 MB and the linear model's step 4-6% slower). Ids of 32 bits
/// or more are matched against `ids` in full, once any has been seen.
pub struct RowSlots {
    cells: Vec<Cell>,
    /// 64 - log2(cells.len()).
    shift: u32,
    used_cells: Vec<usize>,
    /// Whether an id of 32 bits or more was inserted since the last reset.
    any_wide: bool,
    /// Feature id of each slot.
    pub ids: Vec<u64>,
}

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Cell {
    /// The id's low 32 bits.
    key: u32,
    /// `EMPTY_SLOT` for an empty cell.
    slot: u32,
}

const EMPTY_SLOT: u32 = u32::MAX;
const EMPTY: Cell = Cell { key: 0, slot: EMPTY_SLOT };

/// The table's smallest size (cells).
const MIN_CELLS: usize = 64;

impl Default for RowSlots {
    fn default() -> Self {
        Self {
            cells: vec![EMPTY; MIN_CELLS],
            shift: 64 - MIN_CELLS.trailing_zeros(),
            used_cells: Vec::new(),
            any_wide: false,
            ids: Vec::new(),
        }
    }
}

impl RowSlots {
    /// Forgets all ids. The table keeps its size (that of the largest batch so far).
    pub fn reset(&mut self) {
        for &cell in &self.used_cells {
            self.cells[cell] = EMPTY;
        }
        self.used_cells.clear();
        self.ids.clear();
        self.any_wide = false;
    }

    /// Fibonacci hashing: one multiply, the top bits. Feature ids are spread (hashed) or dense
    /// small numbers, and the golden-ratio multiple scatters runs of consecutive ids evenly.
    #[inline(always)]
    fn home(&self, id: u64) -> usize {
        (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Hints the CPU to bring the cell where a lookup of `id` starts into cache.
    #[inline(always)]
    pub fn prefetch(&self, id: u64) {
        crate::train::shared::prefetch_element(&self.cells, self.home(id));
    }

    /// The slot of `id`, and whether it was just created.
    #[inline]
    pub fn slot_of(&mut self, id: u64) -> (u32, bool) {
        let mask = self.cells.len() - 1;
        let mut cell = self.home(id);
        let wide = id >> 32 != 0;
        let check_whole = wide || self.any_wide;
        loop {
            let c = self.cells[cell];
            if c.slot == EMPTY_SLOT {
                let s = self.ids.len() as u32;
                self.cells[cell] = Cell { key: id as u32, slot: s };
                self.used_cells.push(cell);
                self.ids.push(id);
                self.any_wide |= wide;
                if 2 * self.ids.len() > self.cells.len() {
                    self.grow();
                }
                return (s, true);
            }
            if c.key == id as u32 && (!check_whole || self.ids[c.slot as usize] == id) {
                return (c.slot, false);
            }
            cell = (cell + 1) & mask;
        }
    }

    /// Doubles the table and re-inserts every id with its slot.
    #[cold]
    fn grow(&mut self) {
        self.cells = vec![EMPTY; 2 * self.cells.len()];
        self.shift -= 1;
        self.used_cells.clear();
        let mask = self.cells.len() - 1;
        for (s, &id) in self.ids.iter().enumerate() {
            let mut cell = self.home(id);
            while self.cells[cell].slot != EMPTY_SLOT {
                cell = (cell + 1) & mask;
            }
            self.cells[cell] = Cell { key: id as u32, slot: s as u32 };
            self.used_cells.push(cell);
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Counting sort of a batch's non-zeros by slot (`slots` yields each non-zero's slot, in batch
/// order), stable, so batch order holds inside a slot: `start` gets the `n_slots + 1` offsets of
/// the groups, `next` is scratch, and `place(k, at)` puts non-zero k at position `at`. The CPU's
/// deferred backward and the GPU's host batch both group a batch this way.
pub fn group_by_slot<T>(
    slots: impl Iterator<Item = usize> + Clone,
    n_slots: usize,
    start: &mut Vec<T>,
    next: &mut Vec<T>,
    mut place: impl FnMut(usize, usize),
) where
    T: Copy + Default + std::ops::AddAssign + From<u8> + Into<i64>,
{
    start.clear();
    start.resize(n_slots + 1, T::default());
    for s in slots.clone() {
        start[s + 1] += T::from(1);
    }
    for s in 0..n_slots {
        let before = start[s];
        start[s + 1] += before;
    }
    next.clear();
    next.extend_from_slice(&start[..n_slots]);
    for (k, s) in slots.enumerate() {
        place(k, next[s].into() as usize);
        next[s] += T::from(1);
    }
}

/// A batch as the sparse layer sees it (`SparseLinear::prepare`): its distinct ids and, per
/// non-zero, slot and input. Kept apart from the rest of the workspace so that the next batch can
/// be prepared while this one runs through the dense layers (columns mode).
#[derive(Default)]
pub struct PreparedBatch {
    pub slots: RowSlots,
    /// Per non-zero of the batch, in batch order: its slot and the sparse layer input y.
    pub nnz_slot: Vec<u32>,
    pub nnz_y: Vec<f32>,
    /// End offset (into nnz_*) of each batch row.
    pub row_end: Vec<usize>,
    /// `max_abs` entries this batch raised, with their old values, when prepared ahead of its
    /// turn: a prepared batch that is never trained (a stop, a divergence) is undone with them.
    pub raised: Vec<(usize, f32)>,
}

/// Scratch buffers of one training thread. `pre[0]` is the sparse layer output h; for layer l,
/// `act[l]` is its input and `pre[l + 1]` its output before the ReLU.
#[derive(Default)]
pub struct Workspace {
    pub batch: PreparedBatch,
    /// The W row of each slot, loaded once per batch at its first use (batch-level dedup: a hot
    /// feature in most rows is read from shared memory once, and the math runs on plain floats).
    pub row_cache: Vec<f32>,
    /// Snapshot of the sparse layer's bias.
    pub sparse_bias: Vec<f32>,
    pub pre: Vec<Vec<f32>>,
    pub act: Vec<Vec<f32>>,
    pub d_pre: Vec<Vec<f32>>,
    pub logits: Vec<f32>,
    /// Snapshots of the dense layers taken at the start of the batch (Hogwild-safe plain copies).
    pub dense_w: Vec<Vec<f32>>,
    pub dense_b: Vec<Vec<f32>>,
    /// Gradients.
    pub grad_rows: Vec<f32>,
    /// Whether `grad_rows` was left uncomputed (`SparseLinear::backward_deferred`): each row's
    /// gradient is summed from `by_slot` just before the optimizer updates the row.
    pub rows_deferred: bool,
    /// The batch's non-zeros grouped by slot, in batch order within a slot (`by_slot_start[s]..
    /// by_slot_start[s + 1]` for slot s): each one's batch row and input y.
    pub by_slot: Vec<(u32, f32)>,
    pub by_slot_start: Vec<u32>,
    /// Scratch of the grouping: the next free entry of each slot.
    pub by_slot_next: Vec<u32>,
    /// One row gradient (`rows_deferred`).
    pub grad_row: Vec<f32>,
    /// Set by a fit on one thread: no other thread of the fit writes the model, so a linear
    /// model's SGD step may update its weights once per non-zero (`Model::updates_per_nonzero`);
    /// between threads, those repeated writes of hot weights bounce cache lines (2 threads ran at
    /// half the speed of one).
    pub sole_writer: bool,
    /// Set for Hogwild threads training a linear model with plain SGD: the ids whose terms are
    /// summed per batch while the others are updated per non-zero (`Model::updates_per_nonzero`).
    pub hot_ids: Option<std::sync::Arc<super::hot_ids::HotIds>>,
    /// The hot ids' sums of one batch (weights, feature biases), then 8 spare sums.
    pub hot_grad: Vec<f32>,
    pub hot_grad_feat_bias: Vec<f32>,
    /// A linear model's SGD step without deduplication (`SparseLinear::forward_per_nonzero`):
    /// each non-zero's feature id and weight, in batch order.
    pub nonzero_ids: Vec<u64>,
    pub nonzero_w: Vec<f32>,
    /// With hot ids: where each non-zero's terms are summed (`HotIds::sum_index`).
    pub nonzero_sum: Vec<u32>,
    pub grad_feat_bias: Vec<f32>,
    pub grad_sparse_bias: Vec<f32>,
    pub grad_dense_w: Vec<Vec<f32>>,
    pub grad_dense_b: Vec<Vec<f32>>,
    /// Scratch for a transposed dense weight matrix.
    pub dense_wt: Vec<f32>,
    /// f64 scratch for bias gradients (batch sums that cancel).
    pub bias_acc: Vec<f64>,
    /// What the last update overwrote (to undo it on divergence).
    pub undo: crate::optim::UndoLog,
}

/// Resizes to `len` and zeroes, keeping capacity.
#[inline]
pub fn zeroed(buf: &mut Vec<f32>, len: usize) {
    buf.clear();
    buf.resize(len, 0.0);
}

/// Resizes to `len` keeping old contents, for a buffer the caller then overwrites whole (zeroing
/// a batch's row cache first is a serial memset of megabytes).
#[inline]
pub fn resized(buf: &mut Vec<f32>, len: usize) {
    buf.resize(len, 0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_dedup_and_reset() {
        let mut s = RowSlots::default();
        s.reset();
        assert_eq!(s.slot_of(10), (0, true));
        assert_eq!(s.slot_of(99), (1, true));
        assert_eq!(s.slot_of(10), (0, false));
        assert_eq!(s.ids, vec![10, 99]);
        s.reset();
        assert!(s.is_empty());
        assert_eq!(s.slot_of(99), (0, true));
        // Past the first table size: growth keeps every slot, repeats still find theirs.
        s.reset();
        for i in 0..10_000u64 {
            assert_eq!(s.slot_of(i * 7919), (i as u32, true));
        }
        for i in (0..10_000u64).rev() {
            assert_eq!(s.slot_of(i * 7919), (i as u32, false));
        }
        // Ids sharing their low bits (multiples of large powers of two) still get their own slots.
        for shift in [20, 32, 40] {
            s.reset();
            for i in 0..3000u64 {
                assert_eq!(s.slot_of(i << shift), (i as u32, true));
            }
            assert!((0..3000u64).all(|i| s.slot_of(i << shift) == (i as u32, false)));
        }
        s.reset();
        assert!(s.is_empty());
        assert_eq!(s.slot_of(7919), (0, true));
        assert_eq!(s.slot_of(u64::MAX - 1), (1, true));
        // Ids of 32 bits or more share a cell's key with the ids of the same low bits, and each
        // still gets its own slot, before and after the table grows; 2^32 - 1 is an id like any.
        for first in [5u64, (3 << 32) | 5] {
            s.reset();
            let ids = [first, 5, (1 << 32) | 5, (7 << 50) | 5, u32::MAX as u64, 5, u64::MAX - 1, (1 << 32) | 5];
            let mut expected: Vec<u64> = Vec::new();
            for &id in &ids {
                let new = !expected.contains(&id);
                if new {
                    expected.push(id);
                }
                let slot = expected.iter().position(|&e| e == id).unwrap() as u32;
                assert_eq!(s.slot_of(id), (slot, new), "{id}");
            }
            // Past the first table size, with more ids of the same low bits.
            for i in 8..3000u64 {
                expected.push((i << 32) | 5);
                assert_eq!(s.slot_of((i << 32) | 5), (expected.len() as u32 - 1, true));
            }
            for (slot, &id) in expected.iter().enumerate() {
                assert_eq!(s.slot_of(id), (slot as u32, false), "{id}");
            }
        }
    }
}
