//! Mini-batch order: a seeded permutation of the rows per epoch. Batches are then consecutive
//! slices of it, so no row data is copied.

use crate::rng::SplitMix64;

/// Row order of one epoch; `shuffle = false` keeps the file order (streaming, tests).
pub fn epoch_order(n_rows: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n_rows as u32).collect();
    if shuffle {
        SplitMix64::substream(seed, epoch).shuffle(&mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_depends_on_seed_and_epoch() {
        let a = epoch_order(100, 1, 0, true);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
        assert_eq!(a, epoch_order(100, 1, 0, true));
        assert_ne!(a, epoch_order(100, 1, 1, true));
        assert_ne!(a, epoch_order(100, 2, 0, true));
        assert_eq!(epoch_order(5, 1, 0, false), vec![0, 1, 2, 3, 4]);
    }
}
