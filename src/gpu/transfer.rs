//! Moving data between host and device: the model's tables through pinned staging buffers
//! (`Staging`), and batches, packed by host threads into pinned buffers from a pool
//! (`PinnedPool`) and copied in one piece, then read by the kernels through typed views
//! (`DeviceBatch`).

use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, PinnedHostSlice, ValidAsZeroBits,
};

use super::batch::{HostBatch, Packed};
use super::Gpu;
use crate::error::{Error, Result};
use crate::train::SharedF32;

pub fn cuda(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Unavailable(format!("CUDA error while {what}: {e}"))
}

/// `n` zeros on the device (one at least: zero-length buffers cannot be allocated).
pub fn zeros(stream: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<f32>> {
    stream.alloc_zeros::<f32>(n.max(1)).map_err(cuda("allocating device memory"))
}

/// `n` (one at least) device values for a kernel to write before anything reads them.
///
/// # Safety
/// Every element that is read must first be written by a kernel.
pub unsafe fn uninit<T: DeviceRepr>(stream: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<T>> {
    stream.alloc::<T>(n.max(1)).map_err(cuda("allocating device memory"))
}

/// Pinned (page-locked) host memory and the event of the last copy that used it, so that the
/// host neither overwrites a buffer that is still being copied to the device nor reads one that
/// is still being filled from it. (cudarc's own `PinnedHostSlice` events are recorded only when
/// a context has several streams; here everything runs on one.)
pub struct PinnedBuffer<T: DeviceRepr> {
    host: PinnedHostSlice<T>,
    copied: CudaEvent,
}

impl<T: DeviceRepr + ValidAsZeroBits> PinnedBuffer<T> {
    /// `len` zeroed elements.
    pub fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        // SAFETY: the memory is zeroed through the raw pointer before any reference to it exists
        // (zero bits are a valid u32 / f32).
        let mut host = unsafe { ctx.alloc_pinned_with_flags::<T>(len.max(1), 0) }.map_err(cuda("allocating pinned memory"))?;
        let ptr = host.as_mut_ptr().map_err(cuda("allocating pinned memory"))?;
        // SAFETY: `ptr` points to `len.max(1)` elements of fresh pinned memory that nothing else uses.
        unsafe { std::ptr::write_bytes(ptr, 0, len.max(1)) };
        Ok(Self { host, copied: ctx.new_event(None).map_err(cuda("creating an event"))? })
    }

    /// Elements the buffer holds.
    pub fn capacity(&self) -> usize {
        self.host.len()
    }

    /// The host side, once the last copy that used it has finished.
    pub fn ready(&mut self) -> Result<&mut [T]> {
        self.copied.synchronize().map_err(cuda("waiting for a copy"))?;
        self.host.as_mut_slice().map_err(cuda("waiting for a copy"))
    }

    /// Queues the copy of the buffer's first `dst.len()` elements into `dst`.
    pub fn to_device(&mut self, stream: &Arc<CudaStream>, dst: &mut impl DevicePtrMut<T>) -> Result<()> {
        // A plain slice of the pinned memory: the driver copies it asynchronously, and
        // `copied` (recorded just after) guards its reuse.
        let host = self.host.as_slice().map_err(cuda("copying to the device"))?;
        let Some(host) = host.get(..dst.len()) else {
            return Err(Error::Unavailable(format!("internal: a copy of {} elements from a buffer of {}", dst.len(), host.len())));
        };
        stream.memcpy_htod(host, dst).map_err(cuda("copying to the device"))?;
        self.copied.record(stream).map_err(cuda("recording a copy"))
    }

    /// Queues the copy of `src` (at most the buffer's length) into the buffer.
    pub fn from_device(&mut self, stream: &Arc<CudaStream>, src: &impl DevicePtr<T>) -> Result<()> {
        stream.memcpy_dtoh(src, &mut self.host).map_err(cuda("copying from the device"))?;
        self.copied.record(stream).map_err(cuda("recording a copy"))
    }
}

impl<T: DeviceRepr> Drop for PinnedBuffer<T> {
    fn drop(&mut self) {
        // The memory is freed right after: no copy may still use it.
        let _ = self.copied.synchronize();
    }
}

/// Host-device copies of the model's tables (hundreds of MB for a 2^20 x 50 table with Adam)
/// go through two pinned staging buffers: the host fills one while the link copies the other.
/// Straight copies from pageable memory ran at about 1 GB/s on an H100 machine (each table copied
/// to a fresh vector first, then staged again by the driver).
pub struct Staging {
    buffers: [PinnedBuffer<f32>; 2],
}

const STAGE_FLOATS: usize = 1 << 22;

impl Staging {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        Ok(Self { buffers: [PinnedBuffer::new(ctx, STAGE_FLOATS)?, PinnedBuffer::new(ctx, STAGE_FLOATS)?] })
    }

    /// Runs `f` with the process's staging buffers (allocated on first use).
    pub fn with<R>(gpu: &Gpu, f: impl FnOnce(&mut Staging) -> Result<R>) -> Result<R> {
        let mut slot = gpu.staging.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(Staging::new(&gpu.ctx)?);
        }
        f(slot.as_mut().expect("allocated above"))
    }

    pub fn upload(&mut self, stream: &Arc<CudaStream>, src: &SharedF32) -> Result<CudaSlice<f32>> {
        let n = src.len();
        let mut dst = zeros(stream, n)?;
        let full = n / STAGE_FLOATS;
        for c in 0..full {
            let range = c * STAGE_FLOATS..(c + 1) * STAGE_FLOATS;
            let buffer = &mut self.buffers[c % 2];
            src.par_load_into(range.start, buffer.ready()?);
            buffer.to_device(stream, &mut dst.slice_mut(range))?;
        }
        let start = full * STAGE_FLOATS;
        if start < n {
            let mut tail = vec![0.0f32; n - start];
            src.par_load_into(start, &mut tail);
            // From pageable memory: the call returns once `tail` has been read.
            stream.memcpy_htod(&tail, &mut dst.slice_mut(start..n)).map_err(cuda("copying to the device"))?;
        }
        Ok(dst)
    }

    pub fn download(&mut self, stream: &Arc<CudaStream>, src: &CudaSlice<f32>, dst: &SharedF32) -> Result<()> {
        let n = dst.len();
        let full = n / STAGE_FLOATS;
        let chunk = |c: usize| c * STAGE_FLOATS..(c + 1) * STAGE_FLOATS;
        // Chunk c + 1 is on its way while chunk c is unpacked.
        if full > 0 {
            self.buffers[0].from_device(stream, &src.slice(chunk(0)))?;
        }
        for c in 0..full {
            if c + 1 < full {
                self.buffers[(c + 1) % 2].from_device(stream, &src.slice(chunk(c + 1)))?;
            }
            dst.par_store_from(c * STAGE_FLOATS, self.buffers[c % 2].ready()?);
        }
        let start = full * STAGE_FLOATS;
        if start < n {
            let tail = stream.clone_dtoh(&src.slice(start..n)).map_err(cuda("copying from the device"))?;
            dst.par_store_from(start, &tail);
        }
        Ok(())
    }
}

/// A batch packed on a host thread into pinned memory, ready for one asynchronous copy.
pub struct StagedBatch {
    pub sizes: BatchSizes,
    pub at: Packed,
    pub words: PinnedBuffer<u32>,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct BatchSizes {
    pub n_rows: usize,
    pub nnz: usize,
    pub n_slots: usize,
    pub n_chunks: usize,
    pub n_hot: usize,
    pub n_partials: usize,
}

impl BatchSizes {
    fn of(b: &HostBatch) -> Self {
        Self {
            n_rows: b.n_rows,
            nnz: b.nnz(),
            n_slots: b.slot_id.len(),
            n_chunks: b.chunk_slot.len(),
            n_hot: b.hot_slot.len(),
            n_partials: b.n_partials,
        }
    }
}

/// Words past the packed arrays: a view of an empty array still needs one element.
const PADDING: usize = 2;

/// Pinned buffers for batches, shared by the host threads that build them. A buffer goes back
/// to the pool as soon as its copy is queued; whoever takes it next waits for that copy to finish
/// before writing (`PinnedBuffer::ready`).
pub struct PinnedPool {
    ctx: Arc<CudaContext>,
    free: Mutex<Vec<PinnedBuffer<u32>>>,
}

impl PinnedPool {
    pub fn new(ctx: Arc<CudaContext>) -> Self {
        Self { ctx, free: Mutex::new(Vec::new()) }
    }

    /// Packs `batch` into a pinned buffer that fits it (reused when one is free).
    pub fn stage(&self, batch: &HostBatch) -> Result<StagedBatch> {
        let words = batch.packed_words() + PADDING;
        let mut buffer = self.take(words)?;
        let at = batch.pack(buffer.ready()?);
        Ok(StagedBatch { sizes: BatchSizes::of(batch), at, words: buffer })
    }

    fn take(&self, words: usize) -> Result<PinnedBuffer<u32>> {
        {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            // The smallest free buffer that holds the batch (only the batch's words are copied).
            let best = free.iter().enumerate().filter(|(_, b)| b.capacity() >= words).min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i);
            if let Some(i) = best {
                return Ok(free.swap_remove(i));
            }
        }
        PinnedBuffer::new(&self.ctx, (words + words / 8).next_multiple_of(1 << 14))
    }

    /// Keeps at most `KEEP` buffers, the largest: batches of a given size always find one.
    pub fn give_back(&self, buffer: PinnedBuffer<u32>) {
        const KEEP: usize = 64;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(buffer);
        if free.len() > KEEP {
            let smallest = free.iter().enumerate().min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i).expect("not empty");
            free.swap_remove(smallest);
        }
    }
}

/// One batch on the device: its arrays in one buffer of 4-byte words (`Packed` says where each
/// starts), handed to kernels as typed views.
pub struct DeviceBatch {
    pub sizes: BatchSizes,
    at: Packed,
    words: CudaSlice<u32>,
}

impl DeviceBatch {
    /// Queues the copy of a staged batch and gives its pinned buffer back to `pool`.
    pub fn upload_staged(stream: &Arc<CudaStream>, staged: StagedBatch, pool: &PinnedPool) -> Result<Self> {
        // SAFETY: the copy below writes every word of the buffer before any kernel runs.
        let mut words = unsafe { uninit::<u32>(stream, staged.at.words + PADDING)? };
        let mut host = staged.words;
        host.to_device(stream, &mut words)?;
        pool.give_back(host);
        Ok(Self { sizes: staged.sizes, at: staged.at, words })
    }

    /// A batch from pageable memory (prediction, where copies are not the bottleneck).
    pub fn upload(stream: &Arc<CudaStream>, batch: &HostBatch) -> Result<Self> {
        let mut host = vec![0u32; batch.packed_words() + PADDING];
        let at = batch.pack(&mut host);
        let words = stream.clone_htod(&host).map_err(cuda("copying a batch to the device"))?;
        Ok(Self { sizes: BatchSizes::of(batch), at, words })
    }

    fn view<T>(&self, start: usize, len: usize) -> CudaView<'_, T> {
        let len = len.max(1);
        let words = len * std::mem::size_of::<T>() / 4;
        // SAFETY: views are i32 / f32 over 4-byte words (any bits are valid) or i64 over pairs of
        // words from word 0 (`slot_id`), which a device allocation aligns to 256 bytes; `pack`
        // wrote `len` elements at `start` (or, for an empty array, PADDING words follow).
        unsafe { self.words.slice(start..start + words).transmute::<T>(len) }.expect("a view within its batch")
    }

    pub fn slot_id(&self) -> CudaView<'_, i64> {
        self.view(0, self.sizes.n_slots)
    }
    pub fn row_ptr(&self) -> CudaView<'_, i32> {
        self.view(self.at.row_ptr, self.sizes.n_rows + 1)
    }
    pub fn entry_row(&self) -> CudaView<'_, i32> {
        self.view(self.at.entry_row, self.sizes.nnz)
    }
    pub fn entry_slot(&self) -> CudaView<'_, i32> {
        self.view(self.at.entry_slot, self.sizes.nnz)
    }
    pub fn values(&self) -> CudaView<'_, f32> {
        self.view(self.at.values, self.sizes.nnz)
    }
    pub fn slot_ptr(&self) -> CudaView<'_, i32> {
        self.view(self.at.slot_ptr, self.sizes.n_slots + 1)
    }
    pub fn slot_entries(&self) -> CudaView<'_, i32> {
        self.view(self.at.slot_entries, self.sizes.nnz)
    }
    pub fn targets(&self) -> CudaView<'_, f32> {
        self.view(self.at.targets, self.sizes.n_rows)
    }
    pub fn weights(&self) -> CudaView<'_, f32> {
        self.view(self.at.weights, self.sizes.n_rows)
    }
    pub fn chunk_slot(&self) -> CudaView<'_, i32> {
        self.view(self.at.chunk_slot, self.sizes.n_chunks)
    }
    pub fn chunk_begin(&self) -> CudaView<'_, i32> {
        self.view(self.at.chunk_begin, self.sizes.n_chunks)
    }
    pub fn chunk_partial(&self) -> CudaView<'_, i32> {
        self.view(self.at.chunk_partial, self.sizes.n_chunks)
    }
    pub fn hot_slot(&self) -> CudaView<'_, i32> {
        self.view(self.at.hot_slot, self.sizes.n_hot)
    }
    pub fn hot_partial(&self) -> CudaView<'_, i32> {
        self.view(self.at.hot_partial, self.sizes.n_hot)
    }
}
