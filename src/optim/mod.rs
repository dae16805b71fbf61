//! Optimizers that update only the rows a batch touched ("lazy"), elementwise, on shared
//! buffers. Each optimizer is one small file with its update rule; this module holds the
//! parameter type (values + optimizer slots) and the dispatch, done once per row, not per element.

pub mod adagrad;
pub mod ftrl;
pub mod lazy_adam;
pub mod sgd;

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

    /// `prefetch` of element `i` of the values and every slot.
    #[inline(always)]
    pub fn prefetch_one(&self, i: usize) {
        self.values.prefetch_one(i);
        self.slots.iter().for_each(|s| s.prefetch_one(i));
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
    /// scattered and mostly not in cache. A row listed twice is updated twice, in turn. The old
    /// values go to `undo` (tagged `key`; it restores a row listed twice to its first old value).
    /// Returns false, storing nothing more, as soon as an update would make a value non-finite.
    pub fn apply_rows(&self, param: &Param, key: u32, rows: &[u64], width: usize, grads: &[f32], undo: &mut UndoLog) -> bool {
        self.apply_row_range(param, key, rows, width, 0, width, grads, undo)
    }

    /// Like `apply_rows`, on columns `[col_start, col_start + width)` of rows `stride` long
    /// (the dense baseline updates its table in slices).
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

    /// `apply_rows` with row `k`'s gradient written into `grad` by `grad_of(k, grad)` just
    /// before the row is updated, instead of read from a matrix of all rows' gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_rows_with(
        &self,
        param: &Param,
        key: u32,
        rows: &[u64],
        width: usize,
        grad: &mut [f32],
        undo: &mut UndoLog,
        mut grad_of: impl FnMut(usize, &mut [f32]),
    ) -> bool {
        debug_assert_eq!(grad.len(), width);
        let mut scratch = Scratch::default();
        let ahead_rows = rows_ahead(width);
        let ok = rows.iter().enumerate().all(|(k, &row)| {
            if let Some(&ahead) = rows.get(k + ahead_rows) {
                param.prefetch(ahead as usize * width, width);
            }
            grad_of(k, grad);
            self.update_run(param, key, row as usize * width, grad, &mut scratch, undo)
        });
        undo.fence();
        ok
    }

    /// Whether this step's change to a weight is linear in its gradient (plain SGD without l2),
    /// so that `apply_rows` with a row listed once per occurrence of its gradient's terms is the
    /// update of their sum (rounded differently).
    pub fn per_occurrence(&self) -> bool {
        self.kind == OptimizerKind::Sgd && self.l2 == 0.0
    }

    /// `apply_rows` for rows of one element (the logistic regression's weights, feature biases):
    /// the same update element by element, without the chunk machinery a wide row needs.
    fn apply_scalar_rows(&self, param: &Param, key: u32, rows: &[u64], grads: &[f32], undo: &mut UndoLog) -> bool {
        let ahead_rows = rows_ahead(1);
        let slot = |k: usize, i: usize| param.slots.get(k).map_or(0.0, |s| s.get(i));
        let at = undo.begin_scalars(rows.len());
        let ok = rows.iter().zip(grads.chunks_exact(1)).enumerate().all(|(k, (&row, g))| {
            if let Some(&ahead) = rows.get(k + ahead_rows) {
                param.prefetch_one(ahead as usize);
            }
            let i = row as usize;
            let (mut w, mut s0, mut s1) = ([param.values.get(i)], [slot(0, i)], [slot(1, i)]);
            undo.scalar(row, [w[0], s0[0], s1[0]]);
            if !self.rule(param, &mut w, &mut s0, &mut s1, g) {
                return false;
            }
            param.values.set(i, w[0]);
            for (slot, v) in param.slots.iter().zip([s0[0], s1[0]]) {
                slot.set(i, v);
            }
            true
        });
        undo.end_scalars(key, at);
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

    /// Updates `[start, start + grads.len())` of `param`, its old values logged first: Lazy Adam
    /// four elements at a time in registers (`lazy_adam::update_shared`), the other rules chunk
    /// by chunk, loaded from the shared buffers into stack arrays, updated with vectorizable plain
    /// math and stored back. Returns false as soon as a chunk (a group of four, for Lazy Adam)
    /// would become non-finite, storing nothing of it.
    #[inline(always)]
    fn update_run(&self, param: &Param, key: u32, start: usize, grads: &[f32], scratch: &mut Scratch, undo: &mut UndoLog) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.kind == OptimizerKind::LazyAdam {
            // In registers, with no staging copy (half the time of the staged update).
            let l2 = if param.regularized { self.l2 } else { 0.0 };
            let n = grads.len();
            let [m, v] = &param.slots[..] else { unreachable!("Lazy Adam has two slots") };
            let (w, m, v) = (param.values.range(start, n), m.range(start, n), v.range(start, n));
            return undo.record_groups(key, start, n, 3, |log| lazy_adam::update_shared(w, m, v, grads, self.lr_t, l2, log));
        }
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
    entries: Vec<Entry>,
    values: Vec<f32>,
    /// A log that records nothing (the dense baseline, whose updates touch every row).
    disabled: bool,
}

/// One logged run: `len` elements of param `key` from element `start`, their old values (and
/// their slots') at `values[at..at + len * parts]`.
struct Entry {
    key: u32,
    start: usize,
    len: usize,
    at: usize,
    layout: Layout,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The run's old values, then each slot's.
    Parts,
    /// Per group of four elements the four old values, then each slot's four; per element after
    /// the last whole group, its value and its slots' (`GroupLog`).
    Groups,
    /// Scattered single elements (`apply_scalar_rows`): per element `SCALAR_FLOATS` floats, its
    /// index (a u64 as the bits of two floats, low half first), its old value and its slots'
    /// (as many as it has: the last float is unused when it has one, two with no slots).
    Scalars,
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
        let at = self.values.len();
        let mut len = 0;
        for part in parts {
            len = part.len();
            append_streaming(&mut self.values, part);
        }
        self.entries.push(Entry { key, start, len, at, layout: Layout::Parts });
    }

    /// Starts logging up to `rows` scattered elements (`Layout::Scalars`, one entry for them
    /// all: a linear model logs tens of thousands per batch); returns where they start, for
    /// `end_scalars`.
    #[inline]
    fn begin_scalars(&mut self, rows: usize) -> usize {
        if !self.disabled {
            self.values.reserve(rows * SCALAR_FLOATS);
        }
        self.values.len()
    }

    /// Logs element `index` of the run begun by `begin_scalars`: its old value and its slots'
    /// (fixed size, so the copy is a few plain stores).
    #[inline(always)]
    fn scalar(&mut self, index: u64, old: [f32; 3]) {
        if !self.disabled {
            let [a, b, c] = old;
            self.values.extend_from_slice(&[f32::from_bits(index as u32), f32::from_bits((index >> 32) as u32), a, b, c]);
        }
    }

    /// Closes the run begun at `at` (values of param `key`).
    #[inline]
    fn end_scalars(&mut self, key: u32, at: usize) {
        let len = (self.values.len() - at) / SCALAR_FLOATS;
        if len > 0 {
            self.entries.push(Entry { key, start: 0, len, at, layout: Layout::Scalars });
        }
    }

    /// Runs `update` with a `GroupLog` for a run of `len` elements (and `parts - 1` slots) of
    /// param `key` from `start` (`None` when the log is disabled); logs what it wrote.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn record_groups<R>(&mut self, key: u32, start: usize, len: usize, parts: usize, update: impl FnOnce(Option<&mut GroupLog>) -> R) -> R {
        if self.disabled {
            return update(None);
        }
        // Room for the run and for aligning its start to 16 bytes (movntps). The padding is
        // written with non-temporal stores too: a plain store into a line being written
        // non-temporally flushes the write-combining buffer (that made the update 25% slower).
        self.values.reserve(len * parts + 3);
        // The end is 4-byte aligned (f32), so 0 to 3 floats reach a 16-byte boundary.
        let pad = (16 - self.values.as_ptr_range().end as usize % 16) % 16 / 4;
        let spare = self.values.spare_capacity_mut();
        let mut log = GroupLog { out: spare[..pad + len * parts].as_mut_ptr() as *mut f32, parts, logged: 0 };
        (0..pad).for_each(|_| log.float(0.0));
        let at = self.values.len() + pad;
        let result = update(Some(&mut log));
        let logged = log.logged;
        // SAFETY: `pad` zeros, then, as `GroupLog` wrote them, every float of the first `logged`
        // elements' layout (groups of 4 elements x `parts` floats, then `parts` floats per
        // element): `pad + logged * parts` floats of the spare capacity, reserved above.
        unsafe { self.values.set_len(at + logged * parts) };
        self.entries.push(Entry { key, start, len: logged, at, layout: Layout::Groups });
        result
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
        for e in self.entries.iter().rev() {
            let param = param_of(e.key);
            let tensors = || std::iter::once(&param.values).chain(&param.slots).enumerate();
            let parts = 1 + param.slots.len();
            if e.layout == Layout::Scalars {
                // Newest first, so that an element logged twice (a row listed twice, as a linear
                // model's per-non-zero SGD step lists them) ends with its oldest value.
                for element in self.values[e.at..e.at + SCALAR_FLOATS * e.len].chunks_exact(SCALAR_FLOATS).rev() {
                    let index = element[0].to_bits() as usize | (element[1].to_bits() as usize) << 32;
                    tensors().for_each(|(k, t)| t.set(index, element[2 + k]));
                }
                continue;
            }
            let old = &self.values[e.at..e.at + parts * e.len];
            match e.layout {
                Layout::Parts => tensors().for_each(|(k, t)| t.store_from(e.start, &old[k * e.len..(k + 1) * e.len])),
                Layout::Scalars => unreachable!("restored above"),
                Layout::Groups => {
                    let groups = e.len / 4;
                    for (g, block) in old[..groups * 4 * parts].chunks_exact(4 * parts).enumerate() {
                        tensors().for_each(|(k, t)| t.store_from(e.start + 4 * g, &block[4 * k..4 * k + 4]));
                    }
                    for (i, element) in old[groups * 4 * parts..].chunks_exact(parts).enumerate() {
                        tensors().for_each(|(k, t)| t.set(e.start + 4 * groups + i, element[k]));
                    }
                }
            }
        }
    }
}

/// Floats per element of a `Layout::Scalars` entry: index (2), value, up to two slots.
const SCALAR_FLOATS: usize = 5;

/// Where a fused update logs the old values of a run as it goes (`UndoLog::record_groups`):
/// whole groups of four with non-temporal stores straight from registers, the elements after
/// the last whole group one by one. Its layout stays valid whatever prefix of the run was logged
/// when an update stops early.
#[cfg(target_arch = "x86_64")]
pub(crate) struct GroupLog {
    /// The next float to write: 16-byte aligned while whole groups are written.
    out: *mut f32,
    parts: usize,
    /// Elements logged so far.
    logged: usize,
}

#[cfg(target_arch = "x86_64")]
impl GroupLog {
    /// Logs the next group of four elements: the values, then each slot's (`parts` vectors).
    #[inline(always)]
    pub(crate) fn group(&mut self, old: &[std::arch::x86_64::__m128]) {
        debug_assert_eq!(old.len(), self.parts);
        for &v in old {
            // SAFETY: `out` points into the run's reserved region (room for `len * parts`
            // floats, of which fewer than that are written), 16-byte aligned: the region starts
            // aligned and every group advances it by 16 bytes per part.
            unsafe {
                std::arch::x86_64::_mm_stream_ps(self.out, v);
                self.out = self.out.add(4);
            }
        }
        self.logged += 4;
    }

    /// Logs the next single element: the value, then each slot's.
    #[inline(always)]
    pub(crate) fn element(&mut self, old: &[f32]) {
        debug_assert_eq!(old.len(), self.parts);
        old.iter().for_each(|&v| self.float(v));
        self.logged += 1;
    }

    /// One float, non-temporally (movnti: any 4-byte aligned address).
    #[inline(always)]
    fn float(&mut self, v: f32) {
        // SAFETY: as in `group`, inside the reserved region, which is 4-byte aligned.
        unsafe {
            std::arch::x86_64::_mm_stream_si32(self.out as *mut i32, v.to_bits() as i32);
            self.out = self.out.add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Lazy Adam parameter of `rows` x `width` with non-trivial values and moments.
    fn adam_param(rows: usize, width: usize, seed: u64) -> Param {
        let f = |k: u64| move |i: usize| (crate::rng::hash_to_unit(seed + k, i as u64) as f32 - 0.5) * (k + 1) as f32;
        let p = Param::new(SharedF32::from_fn(rows * width, f(0)).unwrap(), vec![rows, width], OptimizerKind::LazyAdam, true).unwrap();
        p.slots[0].copy_from(&(0..rows * width).map(f(1)).collect::<Vec<_>>());
        p.slots[1].copy_from(&(0..rows * width).map(|i| f(2)(i).abs()).collect::<Vec<_>>());
        p
    }

    fn snapshot(p: &Param) -> Vec<Vec<f32>> {
        std::iter::once(&p.values).chain(&p.slots).map(|t| t.to_vec()).collect()
    }

    #[test]
    fn fused_adam_rows_match_the_plain_rule_bit_for_bit_and_undo_exactly() {
        let config = OptimizerConfig { kind: OptimizerKind::LazyAdam, learning_rate: 0.05, l1: 0.0, l2: 0.01 };
        for width in [1, 3, 4, 5, 8, 50, 67, 130] {
            let p = adam_param(9, width, width as u64);
            let before = snapshot(&p);
            let rows = [7u64, 2, 5, 0];
            let grads: Vec<f32> = (0..rows.len() * width).map(|i| (crate::rng::hash_to_unit(99, i as u64) as f32 - 0.5) * 3.0).collect();
            let step = config.step(3);
            let mut undo = UndoLog::default();
            assert!(step.apply_rows(&p, 0, &rows, width, &grads, &mut undo));
            // The plain rule on copies, row by row.
            let mut expected = before.clone();
            for (k, &r) in rows.iter().enumerate() {
                let at = r as usize * width..(r as usize + 1) * width;
                let [w, m, v] = &mut expected[..] else { unreachable!() };
                assert!(lazy_adam::update(
                    &mut w[at.clone()],
                    &mut m[at.clone()],
                    &mut v[at],
                    &grads[k * width..(k + 1) * width],
                    step.lr_t,
                    0.01
                ));
            }
            assert!(snapshot(&p) == expected, "width {width}");
            undo.restore(|_| &p);
            assert!(snapshot(&p) == before, "width {width}: undo");
        }
    }

    #[test]
    fn a_fused_adam_update_that_overflows_midway_is_undone_exactly() {
        let config = OptimizerConfig { kind: OptimizerKind::LazyAdam, learning_rate: 0.05, l1: 0.0, l2: 0.0 };
        for (width, bad_at) in [(50, 0), (50, 23), (50, 49), (6, 5), (3, 1), (1, 0)] {
            let p = adam_param(4, width, 7);
            let before = snapshot(&p);
            let rows = [1u64, 3];
            let mut grads = vec![0.5f32; 2 * width];
            // g^2 overflows the second moment in the second row.
            grads[width + bad_at] = 3e38;
            let mut undo = UndoLog::default();
            assert!(!config.step(1).apply_rows(&p, 0, &rows, width, &grads, &mut undo));
            assert!(snapshot(&p).iter().flatten().all(|x| x.is_finite()), "width {width}: nothing non-finite stored");
            undo.restore(|_| &p);
            assert!(snapshot(&p) == before, "width {width}, bad at {bad_at}");
        }
    }

    #[test]
    fn per_occurrence_sgd_is_undone_exactly() {
        // Ids repeat within the run: the log restores newest first, so each ends with the value
        // it had before the first of its updates.
        let config = OptimizerConfig { kind: OptimizerKind::Sgd, learning_rate: 0.1, l1: 0.0, l2: 0.0 };
        let p = Param::new(SharedF32::from_fn(10, |i| i as f32 * 0.25 - 1.0).unwrap(), vec![10], OptimizerKind::Sgd, true).unwrap();
        let before = snapshot(&p);
        let mut undo = UndoLog::default();
        let ids = [3u64, 7, 3, 3, 0, 7, 9];
        let step = config.step(1);
        assert!(step.per_occurrence());
        assert!(step.apply_rows(&p, 0, &ids, 1, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], &mut undo));
        assert_eq!(p.values.get(3), before[0][3] - 0.1 * 1.0 - 0.1 * 3.0 - 0.1 * 4.0);
        undo.restore(|_| &p);
        assert!(snapshot(&p) == before);
        // A value that would not be finite stops the run before it is stored.
        let mut undo = UndoLog::default();
        assert!(!step.apply_rows(&p, 0, &ids, 1, &[1.0, 1.0, 1.0, f32::INFINITY, 1.0, 1.0, 1.0], &mut undo));
        assert_eq!(p.values.get(3), before[0][3] - 0.1 - 0.1);
        undo.restore(|_| &p);
        assert!(snapshot(&p) == before);
    }

    #[test]
    fn scalar_rows_of_every_optimizer_are_undone_exactly() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::LazyAdam, OptimizerKind::Adagrad, OptimizerKind::Ftrl] {
            let config = OptimizerConfig { kind, learning_rate: 0.1, l1: 0.01, l2: 0.01 };
            let f = |k: u64| move |i: usize| crate::rng::hash_to_unit(k, i as u64) as f32 + 0.5;
            let p = Param::new(SharedF32::from_fn(20, f(0)).unwrap(), vec![20], kind, true).unwrap();
            p.slots.iter().enumerate().for_each(|(k, s)| s.copy_from(&(0..20).map(f(k as u64 + 1)).collect::<Vec<_>>()));
            let before = snapshot(&p);
            let mut undo = UndoLog::default();
            for (t, rows) in [[3u64, 19, 0, 7], [7, 3, 12, 1]].iter().enumerate() {
                assert!(config.step(t as u64 + 1).apply_rows(&p, 0, rows, 1, &[0.5, -1.0, 2.0, 0.25], &mut undo));
            }
            assert!(snapshot(&p) != before, "{kind:?}");
            undo.restore(|_| &p);
            assert!(snapshot(&p) == before, "{kind:?}");
        }
    }

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
