//! Percentile discretization (twml's `PercentileDiscretizer` and `HashingDiscretizer`): calibrate
//! per-feature percentile boundaries on (a sample of) the data, then turn each
//! `(feature id, value)` of a calibrated feature into a binary bin feature `(bin id, 1.0)`.
//!
//! # Weighted percentile
//! The values of one feature are the stored entries with that id, each with the weight of its
//! row; entries of weight 0 are dropped (they carry no mass). Sort them by value, ties keeping
//! arrival order (a stable sort), let `C_i = w_(1) + ... + w_(i)` (summed in f64 in that order)
//! and `cdf_i = C_i / C_N`. The quantile at `q` is `x_(i*)` with `i*` the smallest `i` such that
//! `cdf_i >= q` (the last value when none is). This is the inverse of the weighted empirical CDF,
//! numpy's `quantile(x, q, method="inverted_cdf", weights=w)`. A feature's quantiles are taken at
//! `q_j = j / n_bins` (computed as `j as f64 / n_bins as f64`), `j = 0..=n_bins`: `q_0` is the
//! minimum, `q_n` the maximum. Every quantile is one of the feature's own values.
//!
//! # Bins
//! The split points of a feature are the distinct interior quantiles `q_1 .. q_{n-1}` that are
//! greater than the minimum, ascending: `s_1 < ... < s_m`, `m <= n_bins - 1`. The bin of a
//! value `v` is `#{j : s_j <= v}`, in `0..=m`, so the bins are `(-inf, s_1)`, `[s_1, s_2)`, ...,
//! `[s_m, +inf)`: values below or above the calibration range land in the end bins. Duplicate
//! quantiles (a value holding more than `1 / n_bins` of the mass, fewer distinct values than
//! bins) collapse into one split; a split equal to the minimum would only open an empty bin
//! below every calibration value, so it is dropped. Hence a feature with one distinct value has
//! one bin, and one with `d` distinct values at most `d` bins, every one of them non-empty on
//! the calibration data.
//!
//! # Output ids (stable: they depend only on the calibration result and these rules)
//! `out_bits` gives an output space of `2^out_bits` ids.
//! - `Kind::Percentile`: calibrated features in ascending feature id order get ranks
//!   `k = 0..C`; bin `b` of rank `k` is id `k * n_bins + b`. A feature that was not calibrated
//!   keeps its value and gets id `C * n_bins + (i mod (2^out_bits - C * n_bins))`, the range left
//!   over (so ids below that range's size pass through unchanged apart from the shift).
//! - `Kind::Hashing`: bin `b` of feature `i` is id
//!   `mix64(i * 0x9E3779B97F4A7C15 + b) mod 2^out_bits` (wrapping u64 arithmetic, `mix64` the
//!   splitmix64 finalizer in `crate::rng`), which does not depend on which other features were
//!   calibrated; an uncalibrated feature keeps its value and gets id `i mod 2^out_bits`.
//!
//! # Streaming calibration in bounded memory
//! Without a reservoir the calibrator keeps every (value, weight) and the quantiles are exact.
//! With a reservoir of size `k`, a feature keeps its entries exactly until it has more than `k`
//! (so small features stay exact); from then on it keeps `k` slots, each an independent
//! single-item weighted reservoir: entry `i` (weight `w_i`, running total `W_i`) replaces each
//! slot independently with probability `w_i / W_i` (the replaced slots are found by geometric
//! skips, one uniform draw per replacement plus one per entry). At any point each slot holds
//! entry `i` with probability `w_i / W`, independently of the other slots: the slots are `k`
//! i.i.d. draws from the weighted distribution of everything seen, and the quantiles are taken
//! on them with unit weights. By the Dvoretzky-Kiefer-Wolfowitz inequality (Massart's
//! constant), `P(sup_x |F_k(x) - F(x)| > eps) <= 2 exp(-2 k eps^2)`, so with probability at
//! least `1 - delta` every boundary `b` of the feature has a rank error at most
//! `eps = sqrt(ln(2 / delta) / (2 k))`: `q` lies in `[F(b-) - eps, F(b) + eps]`, where `F` is
//! the weighted CDF of all the values seen. Memory is at most `k + 1` entries per feature.
//! Random draws come from a stream seeded by `(seed, feature id)`, so the result does not depend
//! on how the data was split into `update` calls.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::data::{validate_weights, CsrView, Idx, OwnedCsr};
use crate::error::{Error, Result};
use crate::invalid;
use crate::rng::{mix64, SplitMix64};

/// The multiplier of the hashed id (`Kind::Hashing`), part of the stable id definition.
pub const HASH_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;
/// Largest `out_bits`: output ids are int64.
pub const MAX_OUT_BITS: u32 = 62;

/// A feature-id hasher for the calibrator's and discretizer's maps: ids are already spread by
/// `mix64`, and SipHash would cost more than the rest of the per-entry work.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix64(self.0 ^ b as u64);
        }
    }
    fn write_i64(&mut self, i: i64) {
        self.0 = mix64(self.0 ^ i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<i64, V, BuildHasherDefault<IdHasher>>;

/// How output ids are assigned (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Percentile,
    Hashing,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "percentile" => Ok(Kind::Percentile),
            "hashing" => Ok(Kind::Hashing),
            other => Err(invalid!("discretizer kind must be 'percentile' or 'hashing', got '{other}'")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Percentile => "percentile",
            Kind::Hashing => "hashing",
        }
    }
}

/// The weighted quantiles of `values` at `j / n_bins`, `j = 0..=n_bins` (module documentation).
/// Entries of weight 0 are ignored; `None` when no entry has a positive weight.
pub fn weighted_quantiles(values: &[f32], weights: &[f32], n_bins: usize) -> Option<Vec<f32>> {
    let mut pairs: Vec<(f32, f32)> = values.iter().zip(weights).filter(|(_, &w)| w > 0.0).map(|(&v, &w)| (v, w)).collect();
    if pairs.is_empty() || n_bins == 0 {
        return None;
    }
    sort_by_value(&mut pairs);
    Some(sorted_quantiles(&pairs, n_bins))
}

/// Stable, and -0.0 == 0.0 as numpy compares them.
fn sort_by_value(pairs: &mut [(f32, f32)]) {
    pairs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
}

/// `pairs` sorted by value, weights > 0, not empty.
fn sorted_quantiles(pairs: &[(f32, f32)], n_bins: usize) -> Vec<f32> {
    let mut cum = Vec::with_capacity(pairs.len());
    let mut c = 0.0f64;
    for &(_, w) in pairs {
        c += w as f64;
        cum.push(c);
    }
    let total = c;
    let mut out = Vec::with_capacity(n_bins + 1);
    let mut i = 0;
    for j in 0..=n_bins {
        let q = j as f64 / n_bins as f64;
        while i + 1 < pairs.len() && cum[i] / total < q {
            i += 1;
        }
        out.push(pairs[i].0);
    }
    out
}

/// Appends the split points of one feature's `n_bins + 1` quantiles (module documentation).
fn split_points(quantiles: &[f32], out: &mut Vec<f32>) {
    let mut last = quantiles[0];
    for &q in &quantiles[1..quantiles.len() - 1] {
        if q > last {
            out.push(q);
            last = q;
        }
    }
}

/// What the calibrator keeps for one feature.
#[derive(Clone, Debug)]
struct FeatureSample {
    id: i64,
    /// Every (value, weight) in arrival order, until there are more than `k` of them.
    exact: Vec<(f32, f32)>,
    /// After that: `k` i.i.d. weighted draws (empty before).
    slots: Vec<f32>,
    total_weight: f64,
    rng: SplitMix64,
}

impl FeatureSample {
    fn new(id: i64, seed: u64) -> Self {
        Self { id, exact: Vec::new(), slots: Vec::new(), total_weight: 0.0, rng: SplitMix64::substream(seed, id as u64) }
    }

    #[inline]
    fn push(&mut self, v: f32, w: f32, reservoir: Option<usize>) {
        self.total_weight += w as f64;
        match reservoir {
            Some(k) if !self.slots.is_empty() => self.replace_slots(v, w as f64 / self.total_weight, k),
            Some(k) => {
                self.exact.push((v, w));
                if self.exact.len() > k {
                    self.start_reservoir(k);
                }
            }
            None => self.exact.push((v, w)),
        }
    }

    /// Fills the `k` slots with independent weighted draws from the exact entries: the state the
    /// slot-wise reservoirs would have reached on the same entries.
    fn start_reservoir(&mut self, k: usize) {
        let mut cum = Vec::with_capacity(self.exact.len());
        let mut c = 0.0f64;
        for &(_, w) in &self.exact {
            c += w as f64;
            cum.push(c);
        }
        self.slots = (0..k)
            .map(|_| {
                let t = self.rng.uniform() * c;
                let i = cum.partition_point(|&x| x <= t).min(self.exact.len() - 1);
                self.exact[i].0
            })
            .collect();
        self.exact = Vec::new();
    }

    /// Each slot independently takes `v` with probability `p`: the gaps between taken slots are
    /// geometric, `floor(ln u / ln(1 - p))`, so the common case (no slot taken) costs one draw.
    #[inline]
    fn replace_slots(&mut self, v: f32, p: f64, k: usize) {
        let log_keep = (-p).ln_1p();
        let mut s = 0usize;
        loop {
            let u = 1.0 - self.rng.uniform();
            let skip = u.ln() / log_keep;
            // NaN would need `log_keep == 0`, i.e. p underflowing to 0: then no slot changes.
            if skip.is_nan() || skip >= (k - s) as f64 {
                break;
            }
            s += skip as usize;
            self.slots[s] = v;
            s += 1;
            if s >= k {
                break;
            }
        }
    }

    fn quantiles(&self, n_bins: usize) -> Vec<f32> {
        let mut pairs: Vec<(f32, f32)> = if self.slots.is_empty() {
            self.exact.clone()
        } else {
            self.slots.iter().map(|&v| (v, 1.0)).collect()
        };
        sort_by_value(&mut pairs);
        sorted_quantiles(&pairs, n_bins)
    }

    fn memory_entries(&self) -> usize {
        self.exact.len() + self.slots.len()
    }
}

/// Collects per-feature samples over any number of `update` calls (chunks of a file, batches of
/// a reader) and computes the boundaries at `finish`.
#[derive(Clone, Debug)]
pub struct Calibrator {
    n_bins: usize,
    reservoir: Option<usize>,
    seed: u64,
    columns: Option<IdMap<()>>,
    index: IdMap<u32>,
    features: Vec<FeatureSample>,
    rows_seen: u64,
}

impl Calibrator {
    /// `reservoir_size`: `None` keeps every value (exact quantiles); `Some(k)` bounds memory to
    /// about `k` values per feature (module documentation for the error bound).
    pub fn new(n_bins: usize, reservoir_size: Option<usize>, seed: u64) -> Result<Self> {
        if n_bins == 0 {
            return Err(invalid!("n_bins must be at least 1"));
        }
        if n_bins > u32::MAX as usize {
            return Err(invalid!("n_bins must be at most {}, got {n_bins}", u32::MAX));
        }
        if reservoir_size == Some(0) {
            return Err(invalid!("the reservoir (sample) size must be at least 1"));
        }
        Ok(Self {
            n_bins,
            reservoir: reservoir_size,
            seed,
            columns: None,
            index: IdMap::default(),
            features: Vec::new(),
            rows_seen: 0,
        })
    }

    /// Calibrates only these feature ids (the continuous ones); the others pass through.
    pub fn with_columns(mut self, columns: &[i64]) -> Result<Self> {
        if let Some(&bad) = columns.iter().find(|&&c| c < 0) {
            return Err(invalid!("columns must be feature ids >= 0, got {bad}"));
        }
        self.columns = Some(columns.iter().map(|&c| (c, ())).collect());
        Ok(self)
    }

    pub fn n_bins(&self) -> usize {
        self.n_bins
    }

    pub fn rows_seen(&self) -> u64 {
        self.rows_seen
    }

    /// Values currently held, over all features (bounded by `features * (k + 1)` with a
    /// reservoir of size `k`).
    pub fn stored_values(&self) -> usize {
        self.features.iter().map(FeatureSample::memory_entries).sum()
    }

    /// Adds one chunk. `x` was validated when it was built (finite values, ids in range), so a
    /// NaN or infinite value was already refused there, naming its row and column.
    pub fn update<P: Idx, I: Idx>(&mut self, x: &CsrView<'_, P, I>, weights: Option<&[f32]>) -> Result<()> {
        if let Some(w) = weights {
            validate_weights(w, x.n_rows())?;
        }
        for row in 0..x.n_rows() {
            let w = weights.map_or(1.0, |w| w[row]);
            if w == 0.0 {
                continue;
            }
            let (ids, values) = x.row(row);
            for (&id, &v) in ids.iter().zip(values) {
                let id = id.as_i64();
                // A feature already sampled is a column: the column set is only asked on a miss.
                let slot = match self.index.get(&id) {
                    Some(&s) => s as usize,
                    None => {
                        if self.columns.as_ref().is_some_and(|c| !c.contains_key(&id)) {
                            continue;
                        }
                        if self.features.len() >= u32::MAX as usize {
                            return Err(invalid!("more than {} distinct features to calibrate", u32::MAX));
                        }
                        self.index.insert(id, self.features.len() as u32);
                        self.features.push(FeatureSample::new(id, self.seed));
                        self.features.len() - 1
                    }
                };
                self.features[slot].push(v, w, self.reservoir);
            }
        }
        self.rows_seen += x.n_rows() as u64;
        Ok(())
    }

    /// The calibrated feature ids (ascending) and their `n_bins + 1` quantiles each, row-major.
    /// Does not consume the calibrator: more chunks may follow.
    pub fn quantiles(&self) -> (Vec<i64>, Vec<f32>) {
        let mut order: Vec<&FeatureSample> = self.features.iter().collect();
        order.sort_unstable_by_key(|f| f.id);
        let per_feature: Vec<Vec<f32>> = order.par_iter().map(|f| f.quantiles(self.n_bins)).collect();
        (order.iter().map(|f| f.id).collect(), per_feature.concat())
    }

    pub fn finish(&self, kind: Kind, out_bits: u32) -> Result<Discretizer> {
        let (ids, quantiles) = self.quantiles();
        Discretizer::new(kind, self.n_bins, out_bits, ids, quantiles)
    }
}

/// Feature id -> offset of the feature's record in `Discretizer::packed`.
#[derive(Clone, Debug)]
enum Lookup {
    /// `table[id]`, `NONE` for an uncalibrated id: when the largest id is small.
    Dense(Vec<u32>),
    Map(IdMap<u32>),
}

const NONE: u32 = u32::MAX;

/// Below this many ids a dense table (4 bytes an id) is used: one load per entry instead of a
/// hash probe.
const DENSE_LOOKUP_LIMIT: i64 = 1 << 24;

impl Lookup {
    fn new(ids: &[i64], offsets: &[u32]) -> Self {
        match ids.last() {
            Some(&max) if max < DENSE_LOOKUP_LIMIT => {
                let mut table = vec![NONE; max as usize + 1];
                for (&id, &off) in ids.iter().zip(offsets) {
                    table[id as usize] = off;
                }
                Lookup::Dense(table)
            }
            _ => Lookup::Map(ids.iter().copied().zip(offsets.iter().copied()).collect()),
        }
    }

    #[inline(always)]
    fn find(&self, id: i64) -> Option<usize> {
        match self {
            Lookup::Dense(t) => t.get(id as usize).copied().filter(|&o| o != NONE).map(|o| o as usize),
            Lookup::Map(m) => m.get(&id).map(|&o| o as usize),
        }
    }
}

/// A calibrated discretizer: maps `(feature id, value)` to `(output id, value)`.
#[derive(Clone, Debug)]
pub struct Discretizer {
    kind: Kind,
    n_bins: usize,
    out_bits: u32,
    feature_ids: Vec<i64>,
    /// `n_bins + 1` per feature, row-major: what calibration found, kept for saving/inspection.
    quantiles: Vec<f32>,
    /// One record per calibrated feature: `[rank, m, s_1 .. s_m]` (the split points as f32
    /// bits). Keeping the rank, the count and the splits together makes a transform entry cost
    /// two dependent loads (lookup, record) on features too many to stay in cache.
    packed: Vec<u32>,
    lookup: Lookup,
}

/// Rows per parallel transform task, at least; a task also ends only at a row boundary, so that
/// errors can name their row.
pub const TRANSFORM_CHUNK_NNZ: usize = 1 << 15;

impl Discretizer {
    /// Builds a discretizer from calibration results (or a file), checking them.
    pub fn new(kind: Kind, n_bins: usize, out_bits: u32, feature_ids: Vec<i64>, quantiles: Vec<f32>) -> Result<Self> {
        if n_bins == 0 || n_bins > u32::MAX as usize {
            return Err(invalid!("n_bins must be in [1, {}], got {n_bins}", u32::MAX));
        }
        if !(1..=MAX_OUT_BITS).contains(&out_bits) {
            return Err(invalid!("out_bits must be in [1, {MAX_OUT_BITS}], got {out_bits}"));
        }
        let n = feature_ids.len();
        if quantiles.len() != n * (n_bins + 1) {
            return Err(invalid!(
                "{n} features with n_bins={n_bins} need {} quantiles, got {}",
                n * (n_bins + 1),
                quantiles.len()
            ));
        }
        if let Some(&bad) = feature_ids.iter().find(|&&id| id < 0) {
            return Err(invalid!("feature id {bad} is negative"));
        }
        if let Some(pair) = feature_ids.windows(2).find(|p| p[1] <= p[0]) {
            return Err(invalid!("feature ids must be strictly increasing: {} then {}", pair[0], pair[1]));
        }
        if n > u32::MAX as usize - 1 {
            return Err(invalid!("too many calibrated features: {n}"));
        }
        let space = 1u128 << out_bits;
        if kind == Kind::Percentile && (n as u128) * (n_bins as u128) > space {
            return Err(invalid!(
                "{n} calibrated features x n_bins={n_bins} = {} bin ids do not fit in 2**out_bits = {space} ids: \
                 raise out_bits, lower n_bins, calibrate fewer columns, or use HashingDiscretizer",
                n as u128 * n_bins as u128
            ));
        }
        let mut packed = Vec::new();
        let mut offsets = Vec::with_capacity(n);
        let mut splits = Vec::with_capacity(n_bins);
        for (k, q) in quantiles.chunks_exact(n_bins + 1).enumerate() {
            if let Some(bad) = q.iter().find(|v| !v.is_finite()) {
                return Err(invalid!("quantile {bad} of feature {} is not finite", feature_ids[k]));
            }
            if q.windows(2).any(|p| p[1] < p[0]) {
                return Err(invalid!("the quantiles of feature {} are not ascending", feature_ids[k]));
            }
            splits.clear();
            split_points(q, &mut splits);
            if packed.len() + 2 + splits.len() >= NONE as usize {
                return Err(invalid!("too many calibrated features x bins ({n} x {n_bins}) for one discretizer"));
            }
            offsets.push(packed.len() as u32);
            packed.push(k as u32);
            packed.push(splits.len() as u32);
            packed.extend(splits.iter().map(|s| s.to_bits()));
        }
        let lookup = Lookup::new(&feature_ids, &offsets);
        Ok(Self { kind, n_bins, out_bits, feature_ids, quantiles, packed, lookup })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn n_bins(&self) -> usize {
        self.n_bins
    }
    pub fn out_bits(&self) -> u32 {
        self.out_bits
    }
    /// Size of the output id space, `2^out_bits`.
    pub fn n_outputs(&self) -> u64 {
        1u64 << self.out_bits
    }
    pub fn feature_ids(&self) -> &[i64] {
        &self.feature_ids
    }
    pub fn quantiles(&self) -> &[f32] {
        &self.quantiles
    }
    /// Split points of all features, concatenated, and the offsets of each feature's run
    /// (`n + 1` of them).
    pub fn splits(&self) -> (Vec<f32>, Vec<usize>) {
        let (mut splits, mut offsets) = (Vec::new(), vec![0]);
        let mut pos = 0;
        while pos < self.packed.len() {
            let m = self.packed[pos + 1] as usize;
            splits.extend(self.packed[pos + 2..pos + 2 + m].iter().map(|&b| f32::from_bits(b)));
            offsets.push(splits.len());
            pos += 2 + m;
        }
        (splits, offsets)
    }

    /// First id of the pass-through range (`Kind::Percentile`).
    fn passthrough_base(&self) -> u64 {
        self.feature_ids.len() as u64 * self.n_bins as u64
    }

    /// The output `(id, value)` of one entry; `None` when it is an uncalibrated feature and no
    /// id is left for pass-through (all `2^out_bits` ids hold bins).
    #[inline(always)]
    pub fn map(&self, id: i64, v: f32) -> Option<(i64, f32)> {
        let mask = self.n_outputs() - 1;
        match self.lookup.find(id) {
            Some(off) => {
                let k = self.packed[off] as u64;
                let m = self.packed[off + 1] as usize;
                let bin = self.packed[off + 2..off + 2 + m].partition_point(|&x| f32::from_bits(x) <= v) as u64;
                let out = match self.kind {
                    Kind::Percentile => k * self.n_bins as u64 + bin,
                    Kind::Hashing => hashed_bin_id(id, bin) & mask,
                };
                Some((out as i64, 1.0))
            }
            None => {
                let out = match self.kind {
                    Kind::Percentile => {
                        let base = self.passthrough_base();
                        let room = self.n_outputs() - base;
                        if room == 0 {
                            return None;
                        }
                        base + id as u64 % room
                    }
                    Kind::Hashing => id as u64 & mask,
                };
                Some((out as i64, v))
            }
        }
    }

    /// Maps every entry of `x` (same rows, same number of entries) into a CSR with ids in
    /// `[0, 2^out_bits)`. Runs on the current rayon pool, in chunks of whole rows.
    pub fn transform<P: Idx, I: Idx>(&self, x: &CsrView<'_, P, I>) -> Result<OwnedCsr> {
        let n_rows = x.n_rows();
        let mut indptr = Vec::with_capacity(n_rows + 1);
        indptr.push(0i64);
        let mut chunks = Vec::new(); // (first row, end row)
        let mut chunk_start = 0;
        let mut total = 0usize;
        let mut chunk_nnz = 0usize;
        for row in 0..n_rows {
            let len = x.row(row).0.len();
            total += len;
            chunk_nnz += len;
            indptr.push(total as i64);
            if chunk_nnz >= TRANSFORM_CHUNK_NNZ {
                chunks.push((chunk_start, row + 1));
                chunk_start = row + 1;
                chunk_nnz = 0;
            }
        }
        if chunk_start < n_rows {
            chunks.push((chunk_start, n_rows));
        }
        let mut indices = vec![0i64; total];
        let mut values = vec![0f32; total];
        let mut tasks = Vec::with_capacity(chunks.len());
        let (mut rest_i, mut rest_v) = (&mut indices[..], &mut values[..]);
        for &(r0, r1) in &chunks {
            let len = (indptr[r1] - indptr[r0]) as usize;
            let (ci, ri) = std::mem::take(&mut rest_i).split_at_mut(len);
            let (cv, rv) = std::mem::take(&mut rest_v).split_at_mut(len);
            rest_i = ri;
            rest_v = rv;
            tasks.push((r0, r1, ci, cv));
        }
        let run = |(r0, r1, out_i, out_v): (usize, usize, &mut [i64], &mut [f32])| {
            let mut pos = 0;
            for row in r0..r1 {
                let (ids, vals) = x.row(row);
                for (&id, &v) in ids.iter().zip(vals) {
                    let (o, ov) = self.map(id.as_i64(), v).ok_or_else(|| {
                        invalid!(
                            "row {row}: feature {id} was not calibrated and there is no id left to pass it through: \
                             {} calibrated features x n_bins={} fill all 2**{} output ids; raise out_bits",
                            self.feature_ids.len(),
                            self.n_bins,
                            self.out_bits
                        )
                    })?;
                    out_i[pos] = o;
                    out_v[pos] = ov;
                    pos += 1;
                }
            }
            Ok::<(), Error>(())
        };
        // One task (a reader's batch) runs here: no hand-off to the pool's threads.
        if tasks.len() == 1 {
            tasks.into_iter().try_for_each(run)?;
        } else {
            tasks.into_par_iter().try_for_each(run)?;
        }
        Ok(OwnedCsr { indptr, indices, values, n_features: self.n_outputs() as usize })
    }
}

/// The hashed id of bin `bin` of feature `id` before `mod 2^out_bits` (`Kind::Hashing`).
#[inline(always)]
pub fn hashed_bin_id(id: i64, bin: u64) -> u64 {
    mix64((id as u64).wrapping_mul(HASH_MULTIPLIER).wrapping_add(bin))
}

// ---- files -------------------------------------------------------------------------------

pub const FORMAT: &str = "sparselin-discretizer";
pub const FORMAT_VERSION: u32 = 1;

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Discretizer {
    /// A safetensors file: tensors `feature_ids` (I64 `[C]`) and `quantiles` (F32
    /// `[C, n_bins + 1]`), metadata `format`, `format_version`, `library_version`, `kind`,
    /// `n_bins`, `out_bits`, `checksum` and the caller's opaque `extra` string. The split points
    /// and ids follow from these by the rules in the module documentation.
    pub fn to_bytes(&self, extra: &str) -> Result<Vec<u8>> {
        let ids = i64_bytes(&self.feature_ids);
        let qs = f32_bytes(&self.quantiles);
        let sum = crate::checkpoint::checksum(crate::checkpoint::checksum(0, &ids), &qs);
        let n = self.feature_ids.len();
        let metadata: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("format_version", FORMAT_VERSION.to_string()),
            ("library_version", env!("CARGO_PKG_VERSION").to_string()),
            ("kind", self.kind.name().to_string()),
            ("n_bins", self.n_bins.to_string()),
            ("out_bits", self.out_bits.to_string()),
            ("checksum", format!("{sum:016x}")),
            ("extra", extra.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let err = |e: safetensors::SafeTensorError| Error::Io(format!("cannot serialize the discretizer: {e}"));
        let views = vec![
            ("feature_ids".to_string(), TensorView::new(Dtype::I64, vec![n], &ids).map_err(err)?),
            ("quantiles".to_string(), TensorView::new(Dtype::F32, vec![n, self.n_bins + 1], &qs).map_err(err)?),
        ];
        safetensors::tensor::serialize(views, Some(metadata)).map_err(err)
    }

    /// Reads what `to_bytes` wrote; returns the discretizer and the `extra` string. A truncated,
    /// corrupted, foreign or other-version file is `Error::BadModelFile`.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, String)> {
        let bad = |m: String| Error::BadModelFile(m);
        let corrupt = |e: &dyn std::fmt::Display| {
            bad(format!("not a readable sparselin discretizer file (truncated or corrupted?): {e}"))
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(&e))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(&e))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| {
            meta.get(k).cloned().ok_or_else(|| bad(format!("file metadata has no '{k}': not a sparselin discretizer file")))
        };
        let format = field("format")?;
        if format != FORMAT {
            return Err(bad(format!("not a sparselin discretizer file (metadata 'format' is '{format}', expected '{FORMAT}')")));
        }
        let version = field("format_version")?;
        if version != FORMAT_VERSION.to_string() {
            return Err(bad(format!(
                "discretizer file format version {version} (written by sparselin {}) cannot be read by sparselin {} \
                 (format version {FORMAT_VERSION})",
                meta.get("library_version").map_or("?", |s| s.as_str()),
                env!("CARGO_PKG_VERSION")
            )));
        }
        let kind = Kind::parse(&field("kind")?).map_err(|e| bad(e.to_string()))?;
        let n_bins: usize = field("n_bins")?.parse().map_err(|_| bad("metadata 'n_bins' is not a number".into()))?;
        let out_bits: u32 = field("out_bits")?.parse().map_err(|_| bad("metadata 'out_bits' is not a number".into()))?;
        if st.len() != 2 {
            return Err(bad(format!("discretizer file has {} tensors, expected 2", st.len())));
        }
        let tensor = |name: &str| st.tensor(name).map_err(|_| bad(format!("discretizer file has no tensor '{name}'")));
        let ids_t = tensor("feature_ids")?;
        let qs_t = tensor("quantiles")?;
        let n = ids_t.shape().first().copied().unwrap_or(usize::MAX);
        if ids_t.dtype() != Dtype::I64 || ids_t.shape().len() != 1 {
            return Err(bad(format!("tensor 'feature_ids' is {:?} {:?}, expected I64 [n]", ids_t.dtype(), ids_t.shape())));
        }
        if qs_t.dtype() != Dtype::F32 || qs_t.shape() != [n, n_bins.saturating_add(1)] {
            return Err(bad(format!(
                "tensor 'quantiles' is {:?} {:?}, expected F32 [{n}, {}]",
                qs_t.dtype(),
                qs_t.shape(),
                n_bins.saturating_add(1)
            )));
        }
        let sum = crate::checkpoint::checksum(crate::checkpoint::checksum(0, ids_t.data()), qs_t.data());
        if format!("{sum:016x}") != field("checksum")? {
            return Err(bad("discretizer file checksum does not match its contents: the file is corrupted or was modified".into()));
        }
        let ids = ids_t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        let qs = qs_t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let d = Discretizer::new(kind, n_bins, out_bits, ids, qs)
            .map_err(|e| bad(format!("the discretizer stored in the file is invalid: {e}")))?;
        Ok((d, meta.get("extra").cloned().unwrap_or_default()))
    }

    /// Writes the file atomically (a crash leaves the old file or the new one).
    pub fn save(&self, path: &Path, extra: &str) -> Result<()> {
        crate::checkpoint::write_atomically(path, &self.to_bytes(extra)?)
    }

    pub fn load(path: &Path) -> Result<(Self, String)> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::BadModelFile(m) => Error::BadModelFile(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(rows: &[&[(i64, f32)]]) -> OwnedCsr {
        let mut m = OwnedCsr { indptr: vec![0], n_features: 1 << 20, ..Default::default() };
        for r in rows {
            for &(i, v) in *r {
                m.indices.push(i);
                m.values.push(v);
            }
            m.indptr.push(m.indices.len() as i64);
        }
        m
    }

    fn column(values: &[f32], id: i64) -> OwnedCsr {
        let rows: Vec<Vec<(i64, f32)>> = values.iter().map(|&v| vec![(id, v)]).collect();
        let refs: Vec<&[(i64, f32)]> = rows.iter().map(|r| r.as_slice()).collect();
        csr(&refs)
    }

    #[test]
    fn quantiles_follow_the_inverted_cdf() {
        // 1..=10, unit weights: cdf_i = i / 10; q = j / 4 -> smallest i with i / 10 >= q.
        let v: Vec<f32> = (1..=10).map(|x| x as f32).collect();
        let q = weighted_quantiles(&v, &[1.0; 10], 4).unwrap();
        assert_eq!(q, vec![1.0, 3.0, 5.0, 8.0, 10.0]);
        // A heavy value takes the quantiles its mass covers; a weight-0 value does not count.
        let q = weighted_quantiles(&[5.0, 1.0, 2.0, -7.0], &[6.0, 1.0, 1.0, 0.0], 4).unwrap();
        // sorted 1 (1/8), 2 (2/8), 5 (8/8)
        assert_eq!(q, vec![1.0, 2.0, 5.0, 5.0, 5.0]);
        assert!(weighted_quantiles(&[1.0], &[0.0], 4).is_none());
        assert!(weighted_quantiles(&[], &[], 4).is_none());
    }

    #[test]
    fn splits_drop_duplicates_and_the_minimum() {
        let mut s = Vec::new();
        split_points(&[0.0, 0.0, 0.0, 1.0, 1.0], &mut s);
        assert_eq!(s, vec![1.0]);
        s.clear();
        split_points(&[3.0, 3.0, 3.0], &mut s);
        assert!(s.is_empty());
        s.clear();
        split_points(&[1.0, 2.0, 3.0, 4.0], &mut s);
        assert_eq!(s, vec![2.0, 3.0]); // the maximum is not a split
    }

    #[test]
    fn transform_bins_clamps_and_passes_through() {
        let v: Vec<f32> = (1..=10).map(|x| x as f32).collect();
        let mut cal = Calibrator::new(4, None, 0).unwrap();
        cal.update(&column(&v, 7).view().unwrap(), None).unwrap();
        let d = cal.finish(Kind::Percentile, 10).unwrap();
        assert_eq!(d.feature_ids(), &[7]);
        assert_eq!(d.splits().0, vec![3.0, 5.0, 8.0]);
        let x = csr(&[&[(7, -100.0), (7, 2.9), (7, 3.0), (7, 7.99), (7, 8.0), (7, 1e9)], &[], &[(3, 2.5), (7, 5.0), (3, 2.5)]]);
        let out = d.transform(&x.view().unwrap()).unwrap();
        assert_eq!(out.indptr, vec![0, 6, 6, 9]);
        // one calibrated feature: bins 0..4, pass-through base 4, room 2^10 - 4
        assert_eq!(out.indices, vec![0, 0, 1, 2, 3, 3, 4 + 3, 2, 4 + 3]);
        assert_eq!(out.values, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.5, 1.0, 2.5]);
        assert_eq!(out.n_features, 1024);
    }

    #[test]
    fn hashing_ids_do_not_depend_on_other_features() {
        let a: Vec<f32> = (0..50).map(|x| x as f32).collect();
        let mut both = Calibrator::new(5, None, 0).unwrap();
        both.update(&column(&a, 2).view().unwrap(), None).unwrap();
        both.update(&column(&a, 900).view().unwrap(), None).unwrap();
        let mut one = Calibrator::new(5, None, 0).unwrap();
        one.update(&column(&a, 900).view().unwrap(), None).unwrap();
        let x = column(&a, 900);
        for kind in [Kind::Hashing, Kind::Percentile] {
            let ids_both = both.finish(kind, 20).unwrap().transform(&x.view().unwrap()).unwrap().indices;
            let ids_one = one.finish(kind, 20).unwrap().transform(&x.view().unwrap()).unwrap().indices;
            assert_eq!(ids_both == ids_one, kind == Kind::Hashing, "{kind:?}");
        }
        let d = one.finish(Kind::Hashing, 20).unwrap();
        assert_eq!(d.map(900, 0.0).unwrap().0 as u64, hashed_bin_id(900, 0) & ((1 << 20) - 1));
        assert_eq!(d.map(5_000_123, 0.5), Some((5_000_123 & ((1 << 20) - 1), 0.5)));
    }

    #[test]
    fn columns_and_weights() {
        let x = csr(&[&[(0, 1.0), (1, 10.0)], &[(0, 2.0), (1, 20.0)], &[(0, 3.0), (1, 30.0)]]);
        let mut cal = Calibrator::new(2, None, 0).unwrap().with_columns(&[1, 5]).unwrap();
        cal.update(&x.view().unwrap(), Some(&[1.0, 0.0, 3.0])).unwrap();
        let (ids, q) = cal.quantiles();
        assert_eq!(ids, vec![1]); // 5 never appears, 0 is not a column
        assert_eq!(q, vec![10.0, 30.0, 30.0]); // row 1 has weight 0: 10 (1/4), 30 (4/4)
        assert!(cal.update(&x.view().unwrap(), Some(&[1.0, f32::NAN, 1.0])).unwrap_err().to_string().contains("row 1"));
        assert!(Calibrator::new(2, None, 0).unwrap().with_columns(&[-1]).is_err());
    }

    #[test]
    fn empty_input_and_degenerate_features() {
        let cal = Calibrator::new(3, Some(10), 0).unwrap();
        let d = cal.finish(Kind::Percentile, 4).unwrap();
        assert!(d.feature_ids().is_empty());
        let empty = csr(&[]);
        assert_eq!(d.transform(&empty.view().unwrap()).unwrap().indptr, vec![0]);
        let mut cal = Calibrator::new(3, None, 0).unwrap();
        cal.update(&column(&[4.0; 5], 1).view().unwrap(), None).unwrap();
        let d = cal.finish(Kind::Percentile, 4).unwrap();
        assert_eq!(d.splits().1, vec![0, 0]); // one distinct value: one bin
        assert_eq!(d.map(1, -3.0), Some((0, 1.0)));
        assert_eq!(d.map(1, 99.0), Some((0, 1.0)));
        // all ids taken by bins: an uncalibrated feature has nowhere to go
        let full = cal.finish(Kind::Percentile, 2).unwrap(); // 3 bins in 4 ids: room 1
        assert_eq!(full.map(12345, 2.0), Some((3, 2.0)));
        let mut cal = Calibrator::new(4, None, 0).unwrap();
        cal.update(&column(&[4.0; 5], 1).view().unwrap(), None).unwrap();
        let full = cal.finish(Kind::Percentile, 2).unwrap();
        let e = full.transform(&csr(&[&[], &[(2, 1.0)]]).view().unwrap()).unwrap_err();
        assert!(e.to_string().contains("row 1") && e.to_string().contains("feature 2"), "{e}");
        assert!(cal.finish(Kind::Percentile, 1).is_err()); // 4 bins > 2 ids
        assert!(cal.finish(Kind::Hashing, 1).is_ok());
        assert!(Calibrator::new(0, None, 0).is_err());
        assert!(Calibrator::new(2, Some(0), 0).is_err());
    }

    #[test]
    fn reservoir_is_exact_for_small_features_and_chunking_does_not_matter() {
        let mut rng = SplitMix64::new(3);
        let v: Vec<f32> = (0..5000).map(|_| rng.normal() as f32).collect();
        let w: Vec<f32> = (0..5000).map(|_| 0.5 + rng.uniform() as f32).collect();
        let exact = weighted_quantiles(&v, &w, 10).unwrap();
        let mut small = Calibrator::new(10, Some(5000), 1).unwrap();
        small.update(&column(&v, 0).view().unwrap(), Some(&w)).unwrap();
        assert_eq!(small.quantiles().1, exact);

        let mut whole = Calibrator::new(10, Some(200), 1).unwrap();
        whole.update(&column(&v, 0).view().unwrap(), Some(&w)).unwrap();
        assert!(whole.stored_values() <= 201);
        let mut parts = Calibrator::new(10, Some(200), 1).unwrap();
        for (cv, cw) in v.chunks(777).zip(w.chunks(777)) {
            parts.update(&column(cv, 0).view().unwrap(), Some(cw)).unwrap();
        }
        assert_eq!(whole.quantiles(), parts.quantiles());
        assert_eq!(parts.rows_seen(), 5000);
    }

    /// Rank error of the reservoir quantiles against the documented bound, on weighted data.
    #[test]
    fn reservoir_rank_error_within_dkw_bound() {
        let (k, n, n_bins, delta) = (400usize, 40_000usize, 20usize, 1e-3f64);
        let eps = ((2.0 / delta).ln() / (2.0 * k as f64)).sqrt();
        let mut rng = SplitMix64::new(11);
        let v: Vec<f32> = (0..n).map(|_| (rng.normal() * 3.0).exp() as f32).collect();
        let w: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 4.0 } else { 1.0 }).collect();
        let mut cal = Calibrator::new(n_bins, Some(k), 5).unwrap();
        cal.update(&column(&v, 0).view().unwrap(), Some(&w)).unwrap();
        let (_, q) = cal.quantiles();
        let total: f64 = w.iter().map(|&x| x as f64).sum();
        let mut worst = 0.0f64;
        for (j, &b) in q.iter().enumerate() {
            let target = j as f64 / n_bins as f64;
            let below: f64 = v.iter().zip(&w).filter(|(x, _)| **x < b).map(|(_, x)| *x as f64).sum::<f64>() / total;
            let upto: f64 = v.iter().zip(&w).filter(|(x, _)| **x <= b).map(|(_, x)| *x as f64).sum::<f64>() / total;
            worst = worst.max(target - upto).max(below - target);
        }
        assert!(worst <= eps, "rank error {worst} > bound {eps}");
        assert!(worst > 0.0);
    }

    #[test]
    fn file_round_trip_and_corruption() {
        let mut rng = SplitMix64::new(4);
        let v: Vec<f32> = (0..300).map(|_| rng.normal() as f32).collect();
        let mut cal = Calibrator::new(8, None, 0).unwrap();
        cal.update(&column(&v, 3).view().unwrap(), None).unwrap();
        cal.update(&column(&v, 77).view().unwrap(), None).unwrap();
        for kind in [Kind::Percentile, Kind::Hashing] {
            let d = cal.finish(kind, 16).unwrap();
            let bytes = d.to_bytes("{\"x\":1}").unwrap();
            let (back, extra) = Discretizer::from_bytes(&bytes).unwrap();
            assert_eq!(extra, "{\"x\":1}");
            assert_eq!(back.kind(), kind);
            let x = column(&v, 77);
            assert_eq!(d.transform(&x.view().unwrap()).unwrap(), back.transform(&x.view().unwrap()).unwrap());
            assert!(matches!(Discretizer::from_bytes(&bytes[..bytes.len() - 3]), Err(Error::BadModelFile(_))));
            let mut flipped = bytes.clone();
            let n = flipped.len();
            flipped[n - 2] ^= 1;
            let e = Discretizer::from_bytes(&flipped).unwrap_err();
            assert!(e.to_string().contains("checksum"), "{e}");
        }
        let empty = Calibrator::new(8, None, 0).unwrap().finish(Kind::Percentile, 16).unwrap();
        let (back, _) = Discretizer::from_bytes(&empty.to_bytes("").unwrap()).unwrap();
        assert!(back.feature_ids().is_empty());
        assert!(Discretizer::from_bytes(b"nonsense").is_err());
    }

    #[test]
    fn invalid_calibration_results_are_refused() {
        assert!(Discretizer::new(Kind::Percentile, 2, 8, vec![1, 1], vec![0.0; 6]).is_err());
        assert!(Discretizer::new(Kind::Percentile, 2, 8, vec![1], vec![2.0, 1.0, 3.0]).is_err());
        assert!(Discretizer::new(Kind::Percentile, 2, 8, vec![1], vec![0.0, f32::NAN, 3.0]).is_err());
        assert!(Discretizer::new(Kind::Percentile, 2, 8, vec![1], vec![0.0; 4]).is_err());
        assert!(Discretizer::new(Kind::Percentile, 2, 0, vec![1], vec![0.0; 3]).is_err());
        assert!(Discretizer::new(Kind::Percentile, 2, 63, vec![1], vec![0.0; 3]).is_err());
    }
}
