//! Shared f32 buffers for lock-free (Hogwild) training.
//!
//! Every learned number lives in an `AtomicU32` holding f32 bits and is read and written with
//! `Relaxed` loads and stores: threads may lose each other's updates (that is Hogwild's bargain)
//! but there is no data race and no undefined behaviour. On x86-64 and aarch64 these are plain
//! `mov`s, so a single thread pays nothing but the loss of auto-vectorization; hot dense math
//! therefore runs on thread-local plain slices and only touches these buffers to load and store.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::error::{Error, Result};

pub struct SharedF32 {
    data: Vec<AtomicU32>,
}

fn alloc_error(n: usize, bytes_each: usize) -> Error {
    Error::InvalidInput(format!(
        "cannot allocate {:.2} GiB for a tensor of {n} floats: reduce its rows or width (n_features, sparse_width)",
        n as f64 * bytes_each as f64 / (1u64 << 30) as f64
    ))
}

impl SharedF32 {
    /// `n` zeros. Uses `alloc_zeroed`, so pages that are never touched (optimizer state of rows
    /// no batch uses) are never committed by the OS; reports a failed allocation as an error
    /// instead of aborting the process.
    pub fn zeros(n: usize) -> Result<Self> {
        Ok(Self { data: huge_page_zeros(n)? })
    }

    pub fn filled(n: usize, value: f32) -> Result<Self> {
        let buf = Self::zeros(n)?;
        if value.to_bits() != 0 {
            buf.data.iter().for_each(|a| a.store(value.to_bits(), Relaxed));
        }
        Ok(buf)
    }

    /// Element i is `f(i)`; computed in parallel, so `f` must depend on i alone.
    pub fn from_fn(n: usize, f: impl Fn(usize) -> f32 + Sync) -> Result<Self> {
        use rayon::prelude::*;
        let buf = Self::zeros(n)?;
        buf.data.par_chunks(1 << 16).enumerate().for_each(|(c, chunk)| {
            for (k, a) in chunk.iter().enumerate() {
                a.store(f((c << 16) + k).to_bits(), Relaxed);
            }
        });
        Ok(buf)
    }

    pub fn from_slice(values: &[f32]) -> Result<Self> {
        let buf = Self::zeros(values.len())?;
        buf.data.iter().zip(values).for_each(|(a, v)| a.store(v.to_bits(), Relaxed));
        Ok(buf)
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.data.len()
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    #[inline(always)]
    pub fn get(&self, i: usize) -> f32 {
        f32::from_bits(self.data[i].load(Relaxed))
    }

    #[inline(always)]
    pub fn set(&self, i: usize, value: f32) {
        self.data[i].store(value.to_bits(), Relaxed)
    }

    /// Raises element i to at least `value` (which must be >= 0) and returns the new maximum.
    /// Non-negative f32 bit patterns order like the floats, so an integer fetch_max is exact.
    /// The plain load first skips the locked read-modify-write in the common case where the
    /// maximum does not change (it would also bounce the cache line between Hogwild threads).
    #[inline(always)]
    pub fn fetch_max_nonneg(&self, i: usize, value: f32) -> f32 {
        self.raise(i, value).1
    }

    /// Like `fetch_max_nonneg`, returning (the value before, the maximum after).
    #[inline(always)]
    pub fn raise(&self, i: usize, value: f32) -> (f32, f32) {
        debug_assert!(value >= 0.0);
        let cell = &self.data[i];
        let current = cell.load(Relaxed);
        if value.to_bits() <= current {
            return (f32::from_bits(current), f32::from_bits(current));
        }
        let previous = f32::from_bits(cell.fetch_max(value.to_bits(), Relaxed));
        (previous, previous.max(value))
    }

    /// Hints the CPU to bring `[start, start + len)` into cache. Out-of-range requests are
    /// ignored.
    #[inline(always)]
    pub fn prefetch(&self, start: usize, len: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let end = (start + len).min(self.data.len());
            let mut i = start;
            while i < end {
                // SAFETY: `i < data.len()`, so the pointer is in bounds of this allocation;
                // a prefetch only hints the cache, never reads into the program or faults.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(self.data.as_ptr().add(i) as *const i8) };
                i += 16; // 16 f32 per 64-byte cache line
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (start, len);
    }

    /// Hints the CPU to bring element `i` into cache (ignored past the end): `prefetch` of one
    /// element without its loop, for the per-non-zero prefetches of the hottest loops.
    #[inline(always)]
    pub fn prefetch_one(&self, i: usize) {
        prefetch_element(&self.data, i);
    }

    /// Copies `[start, start + out.len())` into `out`.
    #[inline(always)]
    pub fn load_into(&self, start: usize, out: &mut [f32]) {
        load_run(&self.data[start..start + out.len()], out);
    }

    /// Stores `values` into `[start, start + values.len())`.
    #[inline(always)]
    pub fn store_from(&self, start: usize, values: &[f32]) {
        store_run(&self.data[start..start + values.len()], values);
    }

    /// The atomics of `[start, start + len)`, for loops that load/store a whole row.
    #[inline(always)]
    pub fn range(&self, start: usize, len: usize) -> &[AtomicU32] {
        &self.data[start..start + len]
    }

    pub fn copy_to(&self, out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(&self.data) {
            *o = f32::from_bits(a.load(Relaxed));
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        self.data.iter().map(|a| f32::from_bits(a.load(Relaxed))).collect()
    }

    /// Multiplies every element by `factor`, in parallel.
    pub fn scale(&self, factor: f32) {
        use rayon::prelude::*;
        self.data.par_chunks(1 << 16).for_each(|chunk| {
            for a in chunk {
                a.store((f32::from_bits(a.load(Relaxed)) * factor).to_bits(), Relaxed);
            }
        });
    }

    pub fn copy_from(&self, values: &[f32]) {
        for (a, v) in self.data.iter().zip(values) {
            a.store(v.to_bits(), Relaxed);
        }
    }

    /// `load_into` in parallel over chunks: large tables move through staging buffers this way
    /// (the GPU's pinned copies), and one core's loads are slower than the link.
    pub fn par_load_into(&self, start: usize, out: &mut [f32]) {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| self.load_into(start + c * CHUNK, o));
    }

    /// `store_from` in parallel over chunks (see `par_load_into`).
    pub fn par_store_from(&self, start: usize, values: &[f32]) {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        values.par_chunks(CHUNK).enumerate().for_each(|(c, v)| self.store_from(start + c * CHUNK, v));
    }
}

/// Element types for which `size_of::<T>()` zero bytes are a valid value; sealed, so only the
/// two below (the tables' element types) can be allocated by `huge_page_zeros`.
///
/// # Safety
/// All-zero bytes must be a valid, safe value of the implementing type.
pub unsafe trait ZeroValid: sealed::Sealed {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for std::sync::atomic::AtomicU32 {}
}
// SAFETY: zero bytes are the f32 0.0.
unsafe impl ZeroValid for f32 {}
// SAFETY: AtomicU32 has the size, alignment and bit validity of u32 (std docs); zero is a u32.
unsafe impl ZeroValid for AtomicU32 {}

/// `n` zeros, advised onto huge pages (`advise_huge_pages`). Uses `alloc_zeroed`, so pages that
/// are never touched (optimizer state of rows no batch uses) are never committed by the OS;
/// reports a failed allocation as an error instead of aborting the process. Benches' plain
/// arrays come from here too: a roofline must run on the pages the model uses, and `vec!` gets
/// 4 KiB pages under THP's `madvise` mode (`docs/benchmarks.md`, 2026-11-29).
pub fn huge_page_zeros<T: ZeroValid>(n: usize) -> Result<Vec<T>> {
    const { assert!(std::mem::size_of::<T>() != 0, "alloc_zeroed of a zero-sized layout is undefined") };
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| alloc_error(n, std::mem::size_of::<T>()))?;
    // SAFETY: `layout` has non-zero size (n > 0, T not zero-sized: asserted above). A null
    // return is handled. The memory is zeroed, and all-zero bits are a valid T (`ZeroValid`).
    // The pointer comes from the global allocator with exactly the layout `Vec<T>` uses for
    // capacity n, so `Vec::from_raw_parts` may own and later free it.
    let data = unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut T;
        if ptr.is_null() {
            return Err(alloc_error(n, std::mem::size_of::<T>()));
        }
        Vec::from_raw_parts(ptr, n, n)
    };
    advise_huge_pages(&data);
    Ok(data)
}

/// Asks Linux to back a large table with 2 MiB pages. Rows of a big embedding table are read
/// at random; with 4 KiB pages nearly every row costs a TLB miss and a page walk, with 2 MiB
/// pages the whole table fits the TLB's reach. Pages are still committed lazily, on first touch.
fn advise_huge_pages<T>(data: &[T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = data.as_ptr() as usize;
        let end = start + std::mem::size_of_val(data);
        let aligned_start = start.div_ceil(HUGE) * HUGE;
        let aligned_end = end / HUGE * HUGE;
        if aligned_end > aligned_start {
            // SAFETY: [aligned_start, aligned_end) lies inside the live allocation `data`.
            // MADV_HUGEPAGE only changes how the kernel backs those pages (contents, validity
            // and ownership are unchanged), and a failure (e.g. THP disabled) is harmless, so
            // the result is ignored.
            unsafe {
                libc::madvise(aligned_start as *mut libc::c_void, aligned_end - aligned_start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

/// How many rows of `width` floats ahead a pass over scattered table rows prefetches: enough to
/// keep about 40 cache lines in flight (12 rows of 50 floats; 48 rows of one float, a logistic
/// regression's, since 8 of those ahead hide little of a miss). Measured on the reference models.
pub fn rows_ahead(width: usize) -> usize {
    (640 / width.max(1)).clamp(8, 48)
}

/// Hints the CPU to bring `data[i]` into cache (ignored past the end): one instruction, for
/// the per-non-zero prefetches of the hottest loops.
#[inline(always)]
pub fn prefetch_element<T>(data: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if i < data.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `i < data.len()`, so the pointer is in bounds of `data`; a prefetch only
        // hints the cache, never reads into the program or faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(data.as_ptr().add(i) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, i);
}

/// Hints the CPU to bring every cache line of `data` into cache.
#[inline(always)]
pub fn prefetch_slice<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let (start, bytes) = (data.as_ptr() as *const i8, std::mem::size_of_val(data));
        let mut offset = 0;
        while offset < bytes {
            // SAFETY: offset < bytes, so the address lies inside `data`; a prefetch only hints
            // the cache, never reads into the program or faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
            offset += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Load helpers for rows of atomics.
#[inline(always)]
pub fn load(a: &AtomicU32) -> f32 {
    f32::from_bits(a.load(Relaxed))
}

#[inline(always)]
pub fn store(a: &AtomicU32, value: f32) {
    a.store(value.to_bits(), Relaxed)
}

/// Relaxed loads of `src` into `out`, four elements per instruction on x86-64 (`load4`).
#[inline(always)]
fn load_run(src: &[AtomicU32], out: &mut [f32]) {
    debug_assert_eq!(src.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::_mm_storeu_ps;
        let (mut from, mut to) = (src.chunks_exact(4), out.chunks_exact_mut(4));
        for (a, o) in (&mut from).zip(&mut to) {
            // SAFETY: `o` is 4 writable f32 (an unaligned store is allowed).
            unsafe { _mm_storeu_ps(o.as_mut_ptr(), load4(a)) };
        }
        for (a, o) in from.remainder().iter().zip(to.into_remainder()) {
            *o = load(a);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (a, o) in src.iter().zip(out) {
        *o = load(a);
    }
}

/// Relaxed stores of `values` into `dst`, four elements per instruction on x86-64 (`store4`).
#[inline(always)]
fn store_run(dst: &[AtomicU32], values: &[f32]) {
    debug_assert_eq!(dst.len(), values.len());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::_mm_loadu_ps;
        let (mut to, mut from) = (dst.chunks_exact(4), values.chunks_exact(4));
        for (a, v) in (&mut to).zip(&mut from) {
            // SAFETY: `v` is 4 readable f32.
            store4(a, unsafe { _mm_loadu_ps(v.as_ptr()) });
        }
        for (a, &v) in to.remainder().iter().zip(from.remainder()) {
            store(a, v);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (a, &v) in dst.iter().zip(values) {
        store(a, v);
    }
}

/// Relaxed loads of the first four elements of `a` in one `movups`.
///
/// The compiler never vectorizes atomic loads, and a 50-wide row loaded element by element costs
/// more than the Adam math on it, hence inline assembly. This is not a data race: the assembly is
/// opaque to the compiler, and the CPU performs a 16-byte SSE access as accesses of at least the
/// naturally aligned doublewords it covers (Intel SDM vol. 3A, 9.1.1: an aligned doubleword
/// access is atomic; larger SSE accesses may be split into several accesses, never inside an
/// aligned doubleword; an element never straddles a cache line). Each element is therefore read
/// exactly as a relaxed `AtomicU32` load would read it: a whole value some store wrote. Hogwild
/// writers only ever store whole elements.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn load4(a: &[AtomicU32]) -> std::arch::x86_64::__m128 {
    assert!(a.len() >= 4);
    let v: std::arch::x86_64::__m128;
    // SAFETY: `a` holds at least 4 live, contiguous AtomicU32 (16 readable bytes); the load is
    // element-wise atomic (see above), writes only the output register, touches no stack or flags.
    unsafe {
        std::arch::asm!("movups {v}, [{p}]", p = in(reg) a.as_ptr(), v = out(xmm_reg) v, options(nostack, preserves_flags, readonly));
    }
    v
}

/// Relaxed stores of the four lanes of `x` into the first four elements of `a` in one `movups`
/// (the counterpart of `load4`, with the same argument: each element is stored whole, as a
/// relaxed `AtomicU32` store would).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn store4(a: &[AtomicU32], x: std::arch::x86_64::__m128) {
    assert!(a.len() >= 4);
    // SAFETY: `a` holds at least 4 live, contiguous AtomicU32 (16 writable bytes, interior-mutable,
    // so writing through a shared reference is allowed); the store is element-wise atomic (see
    // `load4`) and touches no stack or flags.
    unsafe {
        std::arch::asm!("movups [{p}], {x}", p = in(reg) a.as_ptr(), x = in(xmm_reg) x, options(nostack, preserves_flags));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_copies_cover_exactly_their_range() {
        let n = (1 << 17) + 5; // more than one parallel chunk, and a partial one
        let b = SharedF32::zeros(n).unwrap();
        let values: Vec<f32> = (0..n - 7).map(|i| i as f32).collect();
        b.par_store_from(3, &values);
        let all = b.to_vec();
        assert_eq!(&all[..3], &[0.0; 3]);
        assert_eq!(&all[3..n - 4], &values[..]);
        assert_eq!(&all[n - 4..], &[0.0; 4]);
        let mut out = vec![-1.0f32; n - 9];
        b.par_load_into(4, &mut out);
        assert_eq!(out, all[4..n - 5]);
    }

    #[test]
    fn huge_page_zeros_are_zeros_or_a_clear_error() {
        let n = (4 << 20) + 3; // whole 2 MiB pages and a partial one
        let v = huge_page_zeros::<f32>(n).unwrap();
        assert_eq!(v.len(), n);
        assert!(v.iter().all(|&x| x == 0.0));
        assert!(huge_page_zeros::<f32>(0).unwrap().is_empty());
        // More than the address space: an error naming the size, not an abort.
        let err = huge_page_zeros::<AtomicU32>(usize::MAX / 2).unwrap_err().to_string();
        assert!(err.contains("cannot allocate") && err.contains("GiB"), "{err}");
    }

    #[test]
    fn basics() {
        let b = SharedF32::zeros(10).unwrap();
        assert_eq!(b.to_vec(), vec![0.0; 10]);
        b.set(3, 2.5);
        assert_eq!(b.get(3), 2.5);
        assert_eq!(b.fetch_max_nonneg(3, 1.0), 2.5);
        assert_eq!(b.fetch_max_nonneg(3, 7.0), 7.0);
        assert_eq!(b.get(3), 7.0);
        assert_eq!(SharedF32::filled(3, 0.1).unwrap().to_vec(), vec![0.1; 3]);
        let f = SharedF32::from_fn(200_000, |i| i as f32).unwrap();
        assert_eq!(f.get(199_999), 199_999.0);
        assert!(SharedF32::zeros(usize::MAX / 2).is_err());
    }

    #[test]
    fn runs_load_and_store_every_element_at_any_offset_and_length() {
        let b = SharedF32::from_fn(40, |i| i as f32).unwrap();
        for start in 0..8 {
            for n in 0..=(40 - start).min(19) {
                let mut out = vec![-1.0; n];
                b.load_into(start, &mut out);
                assert_eq!(out, (start..start + n).map(|i| i as f32).collect::<Vec<_>>());
                let new: Vec<f32> = (0..n).map(|k| 1000.0 + k as f32).collect();
                b.store_from(start, &new);
                assert_eq!(b.to_vec()[start..start + n], new[..]);
                // Nothing outside the run moved.
                assert!(b.to_vec().iter().enumerate().all(|(i, &v)| (start..start + n).contains(&i) || v == i as f32));
                b.store_from(start, &(start..start + n).map(|i| i as f32).collect::<Vec<_>>());
            }
        }
    }
}
