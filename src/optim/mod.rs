//! Optimizers that update only the rows a batch touched ("lazy"), elementwise, on shared
//! buffers. Each optimizer is one small file with its update rule; this module holds the
//! parameter type (values + optimizer slots) and the dispatch, done once per row, not per element.

pub mod adagrad;
pub mod ftrl;
pub mod lazy_adam;
pub mod sgd;

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::invalid;
use crate::train::shared::rows_ahead;
use crate::train::SharedF32;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    LazyAdam,
    Adagrad,
    Ftrl,
}

impl OptimizerKind {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "sgd" => Ok(Self::Sgd),
            "lazy_adam" | "adam" => Ok(Self::LazyAdam),
            "adagrad" => Ok(Self::Adagrad),
            "ftrl" => Ok(Self::Ftrl),
            other => Err(invalid!("unknown optimizer '{other}': use 'sgd', 'lazy_adam', 'adagrad' or 'ftrl'")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::LazyAdam => "lazy_adam",
            Self::Adagrad => "adagrad",
            Self::Ftrl => "ftrl",
        }
    }

    /// Names of the per-element state tensors, in the order `Param::slots` holds them.
    pub fn slot_names(self) -> &'static [&'static str] {
        match self {
            Self::Sgd => &[],
            Self::LazyAdam => &["m", "v"],
            Self::Adagrad => &["accumulator"],
            Self::Ftrl => &["z", "n"],
        }
    }

    fn slot_init(self) -> f32 {
        match self {
            Self::Adagrad => adagrad::INITIAL_ACCUMULATOR,
            _ => 0.0,
        }
    }
}

/// Hyper-parameters. beta1/beta2/eps of Adam, the Adagrad initial accumulator and FTRL's beta are
/// the TensorFlow defaults (constants in each optimizer's file).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub learning_rate: f32,
    /// L1 strength (FTRL only).
    pub l1: f32,
    /// L2 strength on weights (not biases) of the rows a batch touched.
    pub l2: f32,
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(invalid!("learning_rate must be a finite number > 0, got {}", self.learning_rate));
        }
        for (name, value) in [("l1", self.l1), ("l2", self.l2)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid!("{name} must be a finite number >= 0, got {value}"));
            }
        }
        if self.l1 > 0.0 && self.kind != OptimizerKind::Ftrl {
            return Err(invalid!("l1 is only supported by optimizer='ftrl'"));
        }
        Ok(())
    }

    /// The scalars of update number `t` (1-based, one per batch).
    pub fn step(&self, t: u64) -> Step {
        let lr_t = match self.kind {
            OptimizerKind::LazyAdam => lazy_adam::corrected_rate(self.learning_rate, t),
            _ => self.learning_rate,
        };
        Step { kind: self.kind, learning_rate: self.learning_rate, lr_t, l1: self.l1, l2: self.l2 }
    }
}

/// One learned tensor with its optimizer state, all shared between training threads.
pub struct Param {
    pub values: SharedF32,
    pub slots: Vec<SharedF32>,
    pub shape: Vec<usize>,
    /// Whether l1/l2 apply (weights) or not (biases).
    pub regularized: bool,
}

impl Param {
    pub fn new(values: SharedF32, shape: Vec<usize>, kind: OptimizerKind, regularized: bool) -> Result<Self> {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        let slots = kind.slot_names().iter().map(|_| SharedF32::filled(values.len(), kind.slot_init())).collect::<Result<Vec<_>>>()?;
        Ok(Self { values, slots, shape, regularized })
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Hints the CPU to bring `[start, start + len)` of the values and every slot into cache.
    #[inline(always)]
    pub fn prefetch(&self, start: usize, len: usize) {
        self.values.prefetch(start, len);
        self.slots.iter().for_each(|s| s.prefetch(start, len));
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The scalars of one update, computed once per batch.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub kind: OptimizerKind,
    pub learning_rate: f32,
    /// Adam's bias-corrected rate; the plain rate for the others.
    pub lr_t: f32,
    pub l1: f32,
    pub l2: f32,
}

impl Step {
    /// Applies row `k` of `grads` (`rows.len()` x `width`) to row `rows[k]` of `param`
    /// (`rows = [0]`, `width = len` for a dense tensor). Each chunk of a row is loaded from the
    /// shared buffers into stack arrays, updated with vectorizable plain math, and stored back;
    /// rows a few steps ahead are prefetched, since the touched rows of a large table are
    /// scattered and mostly not in cache. The old values go to `undo` (tagged `key`). Returns
    /// false, storing nothing more, as soon as an update would make a value non-finite.
    pub fn apply_rows(&self, param: &Param, key: u32, rows: &[u64], width: usize, grads: &[f32], undo: &mut UndoLog) -> bool {
        self.apply_row_range(param, key, rows, width, 0, width, grads, undo)
    }

    /// Like `apply_rows`, on columns `[col_start, col_start + width)` of rows `stride` long
    /// (column-partitioned training: each thread updates its own columns).
    #[allow(clippy::too_many_arguments)]
    pub fn apply_row_range(
        &self,
        param: &Param,
        key: u32,
        rows: &[u64],
        stride: usize,
        col_start: usize,
        width: usize,
        grads: &[f32],
        undo: &mut UndoLog,
    ) -> bool {
        debug_assert_eq!(rows.len() * width, grads.len());
        if width == 1 && stride == 1 && col_start == 0 {
            return self.apply_scalar_rows(param, key, rows, grads, undo);
        }
        let mut scratch = Scratch::default();
        let ahead_rows = rows_ahead(width);
        let ok = rows.iter().enumerate().all(|(k, &row)| {
            if let Some(&ahead) = rows.get(k + ahead_rows) {
                param.prefetch(ahead as usize * stride + col_start, width);
            }
            let start = row as usize * stride + col_start;
            self.update_run(param, key, start, &grads[k * width..(k + 1) * width], &mut scratch, undo)
        });
        undo.fence();
        ok
    }

    /// Like `apply_rows` for whole rows `stride` long whose gradients come in column parts
    /// (see `GradPart`). Each row is updated part after part while it is in cache.
    pub fn apply_rows_in_parts<'g>(
        &self,
        param: &Param,
        key: u32,
        rows: &[u64],
        stride: usize,
        parts: impl Iterator<Item = GradPart<'g>> + Clone,
        undo: &mut UndoLog,
    ) -> bool {
        let mut scratch = Scratch::default();
        let ahead_rows = rows_ahead(stride);
        let ok = rows.iter().enumerate().all(|(k, &row)| {
            if let Some(&ahead) = rows.get(k + ahead_rows) {
                param.prefetch(ahead as usize * stride, stride);
            }
            parts.clone().all(|part| {
                let cw = part.cols.len();
                let start = row as usize * stride + part.cols.start;
                self.update_run(param, key, start, &part.grads[k * cw..(k + 1) * cw], &mut scratch, undo)
            })
        });
        undo.fence();
        ok
    }

    /// `apply_rows` for rows of one element (the logistic regression's weights, feature biases):
    /// the same update element by element, without the chunk machinery a wide row needs.
    fn apply_scalar_rows(&self, param: &Param, key: u32, rows: &[u64], grads: &[f32], undo: &mut UndoLog) -> bool {
        let ahead_rows = rows_ahead(1);
        let n_slots = param.slots.len();
        let slot = |k: usize, i: usize| param.slots.get(k).map_or(0.0, |s| s.get(i));
        let ok = rows.iter().zip(grads.chunks_exact(1)).enumerate().all(|(k, (&row, g))| {
            if let Some(&ahead) = rows.get(k + ahead_rows) {
                param.prefetch(ahead as usize, 1);
            }
            let i = row as usize;
            let (mut w, mut s0, mut s1) = ([param.values.get(i)], [slot(0, i)], [slot(1, i)]);
            undo.record(key, i, [&w[..], &s0[..], &s1[..]].into_iter().take(1 + n_slots));
            if !self.rule(param, &mut w, &mut s0, &mut s1, g) {
                return false;
            }
            param.values.set(i, w[0]);
            for (slot, v) in param.slots.iter().zip([s0[0], s1[0]]) {
                slot.set(i, v);
            }
            true
        });
        undo.fence();
        ok
    }

    /// The optimizer's update rule on plain copies of a run of `param` (`w`) and its slots;
    /// whether every updated value is finite.
    #[inline(always)]
    fn rule(&self, param: &Param, w: &mut [f32], s0: &mut [f32], s1: &mut [f32], g: &[f32]) -> bool {
        let (l1, l2) = if param.regularized { (self.l1, self.l2) } else { (0.0, 0.0) };
        match self.kind {
            OptimizerKind::Sgd => sgd::update(w, g, self.learning_rate, l2),
            OptimizerKind::LazyAdam => lazy_adam::update(w, s0, s1, g, self.lr_t, l2),
            OptimizerKind::Adagrad => adagrad::update(w, s0, g, self.learning_rate, l2),
            OptimizerKind::Ftrl => ftrl::update(w, s0, s1, g, self.learning_rate, l1, l2),
        }
    }

    /// Updates `[start, start + grads.len())` of `param`: each chunk is loaded from the shared
    /// buffers into stack arrays, updated with vectorizable plain math and stored back, its old
    /// values logged first. Returns false, storing nothing, if the chunk would become non-finite.
    #[inline(always)]
    fn update_run(&self, param: &Param, key: u32, start: usize, grads: &[f32], scratch: &mut Scratch, undo: &mut UndoLog) -> bool {
        let n_slots = param.slots.len();
        for (c, g) in grads.chunks(CHUNK).enumerate() {
            let start = start + c * CHUNK;
            let n = g.len();
            let (w, s0, s1) = (&mut scratch.w[..n], &mut scratch.s0[..n], &mut scratch.s1[..n]);
            param.values.load_into(start, w);
            for (slot, buf) in param.slots.iter().zip([&mut *s0, &mut *s1]) {
                slot.load_into(start, buf);
            }
            undo.record(key, start, [&*w, &*s0, &*s1].into_iter().take(1 + n_slots));
            if !self.rule(param, w, s0, s1, g) {
                return false;
            }
            param.values.store_from(start, w);
            for (slot, buf) in param.slots.iter().zip([&*s0, &*s1]) {
                slot.store_from(start, buf);
            }
        }
        true
    }
}

/// Whether no element is infinite or NaN, in integer operations that vectorize (a float
/// compare-and-branch per element would cost as much as the update itself).
#[inline(always)]
pub(crate) fn all_finite(v: &[f32]) -> bool {
    v.iter().fold(0, |acc, &x| acc | non_finite_bit(x)) == 0
}

/// Non-zero (the sign bit) exactly when `x` is infinite or NaN: an exponent of all ones plus one
/// exponent step carries into the sign bit. OR-ed over a run, it checks the run with integer
/// operations that vectorize, inside the update loops themselves.
#[inline(always)]
pub(crate) fn non_finite_bit(x: f32) -> u32 {
    (x.to_bits() & 0x7f80_0000).wrapping_add(0x0080_0000) & 0x8000_0000
}

/// Columns `cols` of the gradients of a list of rows (rows x `cols.len()`).
#[derive(Clone)]
pub struct GradPart<'g> {
    pub cols: Range<usize>,
    pub grads: &'g [f32],
}

/// Elements per chunk of an optimizer update (stack arrays of this size).
const CHUNK: usize = 64;

/// Stack copies of one chunk of weights and optimizer slots.
struct Scratch {
    w: [f32; CHUNK],
    s0: [f32; CHUNK],
    s1: [f32; CHUNK],
}

impl Default for Scratch {
    fn default() -> Self {
        Self { w: [0.0; CHUNK], s0: [0.0; CHUNK], s1: [0.0; CHUNK] }
    }
}

/// Appends `src` to `dst` with non-temporal stores on x86-64: the undo log is written for every
/// row an update touches (megabytes per batch) and read back only on divergence, so it should
/// neither evict the rows being trained from the cache nor read its own lines before writing them.
#[inline]
fn append_streaming(dst: &mut Vec<f32>, src: &[f32]) {
    if src.len() < 8 {
        // A scalar row (logistic regression, feature biases): a plain store costs less.
        dst.extend(src.iter().copied());
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        dst.reserve(src.len());
        let len = dst.len();
        let spare = &mut dst.spare_capacity_mut()[..src.len()];
        // Element by element (movnti) up to a 16-byte boundary, then 4 at a time (movntps).
        let head = (spare.as_ptr().align_offset(16)).min(src.len());
        for (d, &v) in spare[..head].iter_mut().zip(src) {
            // SAFETY: `d` is a valid, 4-byte aligned, exclusively borrowed slot of the vector's
            // spare capacity; movnti writes exactly those 4 bytes.
            unsafe { std::arch::x86_64::_mm_stream_si32(d.as_mut_ptr() as *mut i32, v.to_bits() as i32) };
        }
        let mut body = spare[head..].chunks_exact_mut(4);
        let mut from = src[head..].chunks_exact(4);
        for (d, v) in (&mut body).zip(&mut from) {
            // SAFETY: `d` is 4 exclusively borrowed f32 slots starting on a 16-byte boundary
            // (head aligned the first, and each chunk is 16 bytes), as movntps requires; `v` is 4
            // readable floats (an unaligned load).
            unsafe {
                use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
                _mm_stream_ps(d.as_mut_ptr() as *mut f32, _mm_loadu_ps(v.as_ptr()));
            }
        }
        for (d, &v) in body.into_remainder().iter_mut().zip(from.remainder()) {
            // SAFETY: as for the head.
            unsafe { std::arch::x86_64::_mm_stream_si32(d.as_mut_ptr() as *mut i32, v.to_bits() as i32) };
        }
        // SAFETY: the first src.len() elements of the spare capacity were initialized just above
        // (reserve made room for them).
        unsafe { dst.set_len(len + src.len()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.extend_from_slice(src);
}

/// The values one batch's update overwrote (weights and optimizer slots), so that the update can
/// be undone when training diverges.
#[derive(Default)]
pub struct UndoLog {
    /// (param key, start element, length) per recorded chunk.
    entries: Vec<(u32, usize, usize)>,
    /// For each entry: the old values, then the old values of each slot.
    values: Vec<f32>,
    /// A log that records nothing (the dense baseline, whose updates touch every row).
    disabled: bool,
}

impl UndoLog {
    pub fn disabled() -> Self {
        Self { disabled: true, ..Default::default() }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.values.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[inline(always)]
    fn record<'a>(&mut self, key: u32, start: usize, parts: impl Iterator<Item = &'a [f32]>) {
        if self.disabled {
            return;
        }
        let mut len = 0;
        for part in parts {
            len = part.len();
            append_streaming(&mut self.values, part);
        }
        self.entries.push((key, start, len));
    }

    /// Makes the streaming stores of `record` visible to other threads (call before handing the
    /// log to another thread; a thread always sees its own stores).
    #[inline]
    pub fn fence(&self) {
        #[cfg(target_arch = "x86_64")]
        if !self.disabled {
            // SAFETY: sfence has no preconditions; it only orders this thread's stores.
            unsafe { std::arch::x86_64::_mm_sfence() };
        }
    }

    /// Writes the old values back, newest first.
    pub fn restore<'p>(&self, param_of: impl Fn(u32) -> &'p Param) {
        let mut end = self.values.len();
        for &(key, start, len) in self.entries.iter().rev() {
            let param = param_of(key);
            let parts = 1 + param.slots.len();
            let begin = end - parts * len;
            let old = &self.values[begin..end];
            param.values.store_from(start, &old[..len]);
            for (k, slot) in param.slots.iter().enumerate() {
                slot.store_from(start, &old[(k + 1) * len..(k + 2) * len]);
            }
            end = begin;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::all_finite;

    #[test]
    fn all_finite_matches_is_finite_on_every_kind_of_float() {
        let finite = [0.0, -0.0, 1.0, -3.3e38, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-45, -1e-45];
        let not = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xffff_ffff)];
        assert!(all_finite(&finite) && all_finite(&[]));
        for bad in not {
            for at in 0..finite.len() {
                let mut v = finite.to_vec();
                v.insert(at, bad);
                assert!(!all_finite(&v), "{bad} at {at}");
            }
        }
    }
}
