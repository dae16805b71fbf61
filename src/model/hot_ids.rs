//! The feature ids common enough that Hogwild threads training a linear model with plain SGD
//! sum their gradients over a batch and update them once (`Model::updates_per_nonzero`), while
//! every other id is updated per non-zero as it comes. Written once per non-zero by two threads,
//! a weight in most rows moves its cache line between the cores at nearly every write (the
//! per-non-zero step ran at half its one-thread speed on two); summed per batch, it moves once
//! per batch, and the rare ids keep the cheap per-non-zero step without a table of distinct ids.
//!
//! The set is a hint taken from a sample of the training rows: which ids are in it changes how
//! the same sums are rounded, never what is summed.

use crate::data::{CsrView, Idx};

/// Ids found in at least this share of the sampled rows are hot.
const MIN_ROW_SHARE: usize = 128;
/// At most this many hot ids (the most frequent), so that the table and a thread's per-batch
/// sums stay within L1: 512 ids cover about 45% of make_ctr's non-zeros.
pub const MAX_HOT: usize = 512;
/// Rows sampled, evenly spaced over the training rows (about a millisecond per fit call).
const SAMPLE_ROWS: usize = 512;
/// Cells of the two-choice table: four per hot id, so that nearly every hot id finds one of
/// its two cells free. A power of two fixed at compile time, so indexing needs no bounds check.
const CELLS: usize = 4 * MAX_HOT;
/// An empty cell's key: never an id, as ids are only kept below 2^32 - 1.
const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Cell {
    /// The id (below 2^32 - 1), or `EMPTY`.
    key: u32,
    /// Its index in `HotIds::ids`; all ones in an empty cell.
    index: u32,
}

pub struct HotIds {
    cells: Box<[Cell; CELLS]>,
    ids: Vec<u64>,
}

impl HotIds {
    /// The hot ids of `x` from a sample of its rows, or `None` if there are none worth it (fewer
    /// rows than a sample, or ids past 32 bits, whose cells would need wider keys).
    pub fn sample<P: Idx, I: Idx>(x: &CsrView<'_, P, I>) -> Option<Self> {
        let n = x.n_rows();
        if n < SAMPLE_ROWS || x.n_features() >= EMPTY as usize {
            return None;
        }
        // 32-bit ids sort faster (ids are below n_features here).
        let mut ids: Vec<u32> = Vec::new();
        let mut row: Vec<u32> = Vec::new();
        for k in 0..SAMPLE_ROWS {
            // Counted once per row: the share of rows, not of non-zeros.
            row.clear();
            row.extend(x.row(k * n / SAMPLE_ROWS).0.iter().map(|id| id.as_usize() as u32));
            row.sort_unstable();
            row.dedup();
            ids.extend_from_slice(&row);
        }
        ids.sort_unstable();
        let mut counted: Vec<(usize, u32)> =
            ids.chunk_by(|a, b| a == b).filter(|run| run.len() * MIN_ROW_SHARE >= SAMPLE_ROWS).map(|run| (run.len(), run[0])).collect();
        // Most frequent first (ties by id, so the set is the same for the same rows).
        counted.sort_unstable_by(|a, b| b.cmp(a));
        counted.truncate(MAX_HOT);
        Self::new(counted.into_iter().map(|(_, id)| id as u64))
    }

    /// A table of `ids` (below 2^32 - 1, the most important first); an id whose two cells are
    /// both taken is left out. `None` if none is kept.
    pub fn new(ids: impl IntoIterator<Item = u64>) -> Option<Self> {
        let mut table = Self { cells: Box::new([Cell { key: EMPTY, index: u32::MAX }; CELLS]), ids: Vec::new() };
        for id in ids {
            assert!(id < EMPTY as u64, "hot ids are below 2^32 - 1");
            if table.ids.len() == MAX_HOT || table.index_of(id) != NOT_HOT {
                continue;
            }
            let (a, b) = cells_of(id);
            let cell = if table.cells[a].key == EMPTY { a } else { b };
            if table.cells[cell].key == EMPTY {
                table.cells[cell] = Cell { key: id as u32, index: table.ids.len() as u32 };
                table.ids.push(id);
            }
        }
        (!table.ids.is_empty()).then_some(table)
    }

    /// The hot ids, by index.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The index of `id` among the hot ids, or `NOT_HOT`.
    #[inline(always)]
    pub fn index_of(&self, id: u64) -> u32 {
        // An id past 32 bits gets the empty cells' key, whose index is all ones.
        let key = id.min(EMPTY as u64) as u32;
        let (a, b) = cells_of(id);
        let (ca, cb) = (self.cells[a], self.cells[b]);
        min_u32(select_if_equal(ca.key, key, ca.index, NOT_HOT), select_if_equal(cb.key, key, cb.index, NOT_HOT))
    }

    /// Where the update sums the `k`-th non-zero's terms, whose id is `id`: the id's index if it
    /// is hot, else one of 8 spare sums `len()..len() + 8` by `k` (so that the adds into one do
    /// not wait on each other). Without branches, as hot and rare ids come in random order.
    #[inline(always)]
    pub fn sum_index(&self, id: u64, k: usize) -> usize {
        min_u32(self.index_of(id), self.ids.len() as u32 + (k & 7) as u32) as usize
    }
}

/// What `HotIds::index_of` gives for an id that is not hot.
pub const NOT_HOT: u32 = u32::MAX;

// Selects in registers. Written as plain Rust, the compiler turned these into branches (a
// conditional load of the cell's index; a jump for the minimum), mispredicted about as often as
// not: the hot ids' sums then cost more than the per-non-zero update they save.

/// `if a == b { then } else { other }`.
#[inline(always)]
fn select_if_equal(a: u32, b: u32, then: u32, other: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut out = other;
        // SAFETY: two instructions on registers only (compare, conditional move): no memory, no
        // stack, nothing but `out` and the flags written.
        unsafe {
            std::arch::asm!("cmp {a:e}, {b:e}", "cmove {out:e}, {then:e}", a = in(reg) a, b = in(reg) b, then = in(reg) then,
                out = inout(reg) out, options(pure, nomem, nostack));
        }
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        if a == b {
            then
        } else {
            other
        }
    }
}

#[inline(always)]
fn min_u32(a: u32, b: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut out = a;
        // SAFETY: as in `select_if_equal`.
        unsafe {
            std::arch::asm!("cmp {b:e}, {out:e}", "cmovb {out:e}, {b:e}", b = in(reg) b, out = inout(reg) out, options(pure, nomem, nostack));
        }
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        a.min(b)
    }
}

/// The two cells of an id: Fibonacci hashing (the top bits of a product) by two odd constants.
#[inline(always)]
fn cells_of(id: u64) -> (usize, usize) {
    const SHIFT: u32 = 64 - CELLS.trailing_zeros();
    let a = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> SHIFT) as usize;
    let b = (id.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> SHIFT) as usize;
    (a % CELLS, b % CELLS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_of_finds_each_kept_id_and_nothing_else() {
        let ids: Vec<u64> = (0..700u64).map(|i| i * 7919 + 3).collect();
        let hot = HotIds::new(ids.iter().copied()).unwrap();
        assert_eq!(hot.len(), MAX_HOT);
        // Nearly every id of the first MAX_HOT finds a cell.
        let kept = ids[..MAX_HOT].iter().filter(|&&id| hot.index_of(id) != NOT_HOT).count();
        assert!(kept as f64 >= 0.9 * MAX_HOT as f64, "{kept}");
        for (i, &id) in hot.ids().iter().enumerate() {
            assert_eq!(hot.index_of(id), i as u32);
            for k in 0..20 {
                assert_eq!(hot.sum_index(id, k), i);
            }
        }
        for id in (0..200_000u64).filter(|id| !hot.ids().contains(id)) {
            assert_eq!(hot.index_of(id), NOT_HOT, "{id}");
            assert_eq!(hot.sum_index(id, id as usize), hot.len() + (id as usize & 7), "{id}");
        }
        // Ids past 32 bits share the low bits of hot ids but are never hot.
        for &id in hot.ids() {
            for high in [1u64 << 32, 5 << 40, u64::MAX - u32::MAX as u64] {
                assert_eq!(hot.index_of(id | high), NOT_HOT);
            }
        }
        assert!(HotIds::new([]).is_none());
    }

    #[test]
    fn sample_keeps_the_ids_in_a_large_share_of_rows() {
        // Row r has id 1 (every row), id 2 (every 20th row), id 3 (every 1000th: too rare)
        // and ids unique to it.
        let n = 10_000usize;
        let mut indptr = vec![0i64];
        let mut indices = Vec::new();
        for r in 0..n {
            let mut row = vec![1i64, 1000 + r as i64];
            if r % 20 == 0 {
                row.push(2);
            }
            if r % 1000 == 0 {
                row.push(3);
            }
            // A repeat within a row counts once.
            row.push(1);
            indices.extend(row);
            indptr.push(indices.len() as i64);
        }
        let values = vec![1.0f32; indices.len()];
        let x = CsrView::new(&indptr, &indices, &values, 20_000).unwrap();
        let hot = HotIds::sample(&x).unwrap();
        assert_eq!(hot.ids(), &[1, 2]);
        // Too few rows to sample.
        let x = CsrView::new(&indptr[..11], &indices[..indptr[10] as usize], &values[..indptr[10] as usize], 20_000).unwrap();
        assert!(HotIds::sample(&x).is_none());
    }
}
