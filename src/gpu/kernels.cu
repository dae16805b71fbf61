// sparselin GPU kernels, compiled at run time by NVRTC for the device's compute capability.
// The math is the CPU core's (BRIEF section 2); the comments say how the work is split.
//
// A batch arrives as: n rows; its non-zeros ("entries") in batch order with their row
// (entry_row), the index of their feature among the batch's distinct ids (entry_slot) and value;
// row_ptr[n + 1] over the entries; the distinct ids (slot_id[U]); and the entries grouped by
// slot, in batch order inside a slot (slot_ptr[U + 1], slot_entries[nnz]): the transpose the
// host builds, so that the per-feature reductions below need no atomics. A slot's entries are
// cut into chunks of at most CHUNK (chunk_slot, chunk_begin), one warp's work each; chunks of hot
// slots (more than one chunk) have an index among those (chunk_partial, -1 otherwise) under which
// they leave partial results for one warp per hot slot (hot_slot, hot_partial) to combine.

#define WARP 32
#define CHUNK 32  // entries per work item: must match src/gpu/batch.rs
#define FULL_MASK 0xffffffffu
#define MIN_SCALE 1e-5f

// Optimizer kinds (must match src/gpu/mod.rs).
#define OPT_SGD 0
#define OPT_ADAM 1
#define OPT_ADAGRAD 2
#define ADAM_BETA1 0.9f
#define ADAM_BETA2 0.999f
#define ADAM_ONE_MINUS_BETA1 0.1f
#define ADAM_ONE_MINUS_BETA2 0.001f
#define ADAM_EPSILON 1e-8f

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) v += __shfl_down_sync(FULL_MASK, v, offset);
    return v;  // lane 0 holds the sum
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;  // every lane holds the max
}

// One chunk of a slot's entries: [begin, end) in slot_entries.
struct Chunk {
    int slot, begin, end, partial;
};

__device__ __forceinline__ Chunk chunk_at(int c, const int* chunk_slot, const int* chunk_begin, const int* chunk_partial,
                                          const int* slot_ptr) {
    Chunk ch;
    ch.slot = chunk_slot[c];
    ch.begin = chunk_begin[c];
    ch.end = min(ch.begin + CHUNK, slot_ptr[ch.slot + 1]);
    ch.partial = chunk_partial[c];
    return ch;
}

// One element of the lazy optimizer: the same formulas as src/optim/{sgd,lazy_adam,adagrad}.rs.
__device__ __forceinline__ void optimizer_step(int kind, float* w, float* s0, float* s1, float g, float lr, float lr_t,
                                               float l2) {
    float wv = *w;
    if (kind == OPT_SGD) {
        *w = wv - lr * (g + l2 * wv);
    } else if (kind == OPT_ADAM) {
        g += l2 * wv;
        float m = ADAM_BETA1 * *s0 + ADAM_ONE_MINUS_BETA1 * g;
        float v = ADAM_BETA2 * *s1 + ADAM_ONE_MINUS_BETA2 * g * g;
        *s0 = m;
        *s1 = v;
        *w = wv - lr_t * m / (sqrtf(v) + ADAM_EPSILON);
    } else {
        g += l2 * wv;
        float a = *s0 + g * g;
        *s0 = a;
        *w = wv - lr * g / sqrtf(a);
    }
}

// The largest |v| of each chunk of a hot slot (training only): the carry into later chunks.
extern "C" __global__ void chunk_max_abs(int n_chunks, const int* chunk_slot, const int* chunk_begin,
                                         const int* chunk_partial, const int* slot_ptr, const int* slot_entries,
                                         const float* values, float* chunk_max) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (c >= n_chunks || chunk_partial[c] < 0) return;
    Chunk ch = chunk_at(c, chunk_slot, chunk_begin, chunk_partial, slot_ptr);
    int e = ch.begin + lane;
    float m = warp_max(e < ch.end ? fabsf(values[slot_entries[e]]) : 0.0f);
    if (lane == 0) chunk_max[ch.partial] = m;
}

// Online normalization, one warp per chunk, its entries in batch order, one per lane: training
// raises max_abs as it goes, each entry seeing the max of max_abs, of the slot's earlier entries
// (earlier chunks: chunk_max; this chunk: a prefix max across the lanes) and of itself. A slot
// with one chunk stores its new max_abs here; a hot slot's is stored by sparse_update_hot, after
// every chunk has read the old one. Inference reads max_abs and the entry's own |v| only.
extern "C" __global__ void normalize_entries(int n_chunks, const int* chunk_slot, const int* chunk_begin,
                                             const int* chunk_partial, const int* slot_ptr, const int* slot_entries,
                                             const long long* slot_id, const float* values, float* max_abs,
                                             const float* feat_bias, const float* chunk_max, float* y, int training) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (c >= n_chunks) return;
    Chunk ch = chunk_at(c, chunk_slot, chunk_begin, chunk_partial, slot_ptr);
    long long id = slot_id[ch.slot];
    float m = max_abs[id];
    float b = feat_bias[id];
    if (training && ch.partial >= 0) {
        int earlier = (ch.begin - slot_ptr[ch.slot]) / CHUNK;
        float prior = 0.0f;
        for (int i = lane; i < earlier; i += WARP) prior = fmaxf(prior, chunk_max[ch.partial - earlier + i]);
        m = fmaxf(m, warp_max(prior));
    }
    int e = ch.begin + lane;
    int k = e < ch.end ? slot_entries[e] : 0;
    float v = e < ch.end ? values[k] : 0.0f;
    float scale = fabsf(v);
    if (training) {
        for (int offset = 1; offset < WARP; offset *= 2) {
            float before = __shfl_up_sync(FULL_MASK, scale, offset);
            if (lane >= offset) scale = fmaxf(scale, before);
        }
    }
    scale = fmaxf(scale, m);
    if (e < ch.end) y[k] = v / fmaxf(scale, MIN_SCALE) + b;
    if (training && ch.partial < 0 && lane == WARP - 1) max_abs[id] = scale;  // lanes past the end add |0|
}

// Without normalization the layer input is the raw value.
extern "C" __global__ void copy_values(int nnz, const float* values, float* y) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < nnz) y[k] = values[k];
}

// h[b, :] = bias + sum over row b's entries of W[id, :] * y: one warp per row, lanes across the
// width, so each W row is read as consecutive floats (coalesced). The row's entries are read 32
// at a time, one per lane, and handed round by shuffles, so the loads of W rows do not wait on
// each other's index loads. Widths of 32 or less: lanes split into groups of `width`, each group
// on every (32 / width)-th entry, the groups' sums added at the end.
extern "C" __global__ void gather_forward(int n_rows, int width, const int* row_ptr, const int* entry_slot,
                                          const long long* slot_id, const float* y, const float* W,
                                          const float* bias, float* h) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= n_rows) return;
    int begin = row_ptr[row], end = row_ptr[row + 1];
    if (width <= WARP) {
        int groups = WARP / width, group = lane / width, j = lane % width;
        float acc = 0.0f;
        if (group < groups) {
            for (int k = begin + group; k < end; k += groups) acc += W[slot_id[entry_slot[k]] * (long long)width + j] * y[k];
        }
        for (int g = 1; g < groups; g *= 2) {
            float other = __shfl_down_sync(FULL_MASK, acc, g * width);
            if (group % (2 * g) == 0 && group + g < groups) acc += other;
        }
        if (group == 0) h[(long long)row * width + j] = bias[j] + acc;
        return;
    }
    for (int j0 = 0; j0 < width; j0 += 4 * WARP) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int base = begin; base < end; base += WARP) {
            int k = base + lane;
            long long my_row = k < end ? slot_id[entry_slot[k]] * (long long)width : 0;
            float my_y = k < end ? y[k] : 0.0f;
            int count = min(WARP, end - base);
            for (int t = 0; t < count; ++t) {
                long long r = __shfl_sync(FULL_MASK, my_row, t);
                float yv = __shfl_sync(FULL_MASK, my_y, t);
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    int j = j0 + q * WARP + lane;
                    if (j < width) acc[q] += W[r + j] * yv;
                }
            }
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            int j = j0 + q * WARP + lane;
            if (j < width) h[(long long)row * width + j] = bias[j] + acc[q];
        }
    }
}

// Width 1 (logistic regression): one warp per row, lanes across the row's entries.
extern "C" __global__ void gather_forward_width1(int n_rows, const int* row_ptr, const int* entry_slot,
                                                 const long long* slot_id, const float* y, const float* W,
                                                 const float* bias, float* h) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= n_rows) return;
    float acc = 0.0f;
    for (int k = row_ptr[row] + lane; k < row_ptr[row + 1]; k += WARP) acc += W[slot_id[entry_slot[k]]] * y[k];
    acc = warp_sum(acc);
    if (lane == 0) h[row] = bias[0] + acc;
}

// out[b, o] = bias[o] + sum_i act(x[b, i]) W[i, o], act = ReLU when relu_input (the CPU applies
// ReLU to the previous layer's output before each dense layer). One thread per output element.
extern "C" __global__ void dense_forward(int n_rows, int n_in, int n_out, const float* x, const float* W,
                                         const float* bias, float* out, int relu_input) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n_rows * n_out) return;
    int b = t / n_out, o = t % n_out;
    float acc = bias[o];
    for (int i = 0; i < n_in; ++i) {
        float xi = x[(long long)b * n_in + i];
        if (relu_input) xi = fmaxf(xi, 0.0f);
        acc += xi * W[(long long)i * n_out + o];
    }
    out[t] = acc;
}

// Loss terms and d loss / d logit (mean over the batch, scaled by sample weights): binary
// cross-entropy on logits or squared error, as src/model/loss.rs.
extern "C" __global__ void loss_grad(int n_rows, int regression, const float* logits, const float* targets,
                                     const float* weights, float inv_n, float* d_logits, float* loss_terms) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_rows) return;
    float z = logits[b], t = targets[b], s = weights[b];
    if (regression) {
        float r = z - t;
        loss_terms[b] = s * r * r;
        d_logits[b] = 2.0f * s * r * inv_n;
    } else {
        loss_terms[b] = s * (fmaxf(z, 0.0f) + log1pf(expf(-fabsf(z))) - t * z);
        float p = z >= 0.0f ? 1.0f / (1.0f + expf(-z)) : expf(z) / (1.0f + expf(z));
        d_logits[b] = s * (p - t) * inv_n;
    }
}

// total[0] += sum of the batch's loss terms, in double: one block, so the running total of an
// epoch stays on the device and the host reads it only now and then (no sync per batch).
extern "C" __global__ void accumulate_loss(int n, const float* terms, double* total) {
    __shared__ double partial[256];
    double acc = 0.0;
    for (int b = threadIdx.x; b < n; b += blockDim.x) acc += (double)terms[b];
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) total[0] += partial[0];
}

// Dense layer gradients. grad_W[i, o] = sum_b act(x[b, i]) d_out[b, o]; grad_b[o] = sum_b
// d_out[b, o]: one warp per weight, lanes across the batch (the reduction axis), then a warp sum.
extern "C" __global__ void dense_grad_weights(int n_rows, int n_in, int n_out, const float* x, const float* d_out,
                                              float* grad_W, float* grad_b, int relu_input) {
    int t = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (t >= (n_in + 1) * n_out) return;
    int i = t / n_out, o = t % n_out;
    float acc = 0.0f;
    for (int b = lane; b < n_rows; b += WARP) {
        float xi = 1.0f;  // the bias's input
        if (i < n_in) {
            xi = x[(long long)b * n_in + i];
            if (relu_input) xi = fmaxf(xi, 0.0f);
        }
        acc += xi * d_out[(long long)b * n_out + o];
    }
    acc = warp_sum(acc);
    if (lane == 0) {
        if (i < n_in) grad_W[t] = acc;
        else grad_b[o] = acc;
    }
}

// d_in[b, i] = relu'(pre_in[b, i]) * sum_o W[i, o] d_out[b, o] (pre_in: this layer's input before
// its ReLU, i.e. the previous layer's output).
extern "C" __global__ void dense_grad_input(int n_rows, int n_in, int n_out, const float* pre_in, const float* W,
                                            const float* d_out, float* d_in) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n_rows * n_in) return;
    int b = t / n_in, i = t % n_in;
    float acc = 0.0f;
    if (pre_in[t] > 0.0f) {
        for (int o = 0; o < n_out; ++o) acc += W[(long long)i * n_out + o] * d_out[(long long)b * n_out + o];
    }
    d_in[t] = acc;
}

// Column sums of dh (the sparse layer's bias gradient), one warp per column.
extern "C" __global__ void column_sums(int n_rows, int width, const float* dh, float* out) {
    int j = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (j >= width) return;
    float acc = 0.0f;
    for (int b = lane; b < n_rows; b += WARP) acc += dh[(long long)b * width + j];
    acc = warp_sum(acc);
    if (lane == 0) out[j] = acc;
}

// A dense tensor's optimizer step, one thread per element.
extern "C" __global__ void dense_update(int n, int kind, float* w, float* s0, float* s1, const float* grad, float lr,
                                        float lr_t, float l2) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) optimizer_step(kind, w + t, s0 + t, s1 + t, grad[t], lr, lr_t, l2);
}

// Backward of the sparse layer, one warp per chunk: the row gradient g[j] = sum over the slot's
// entries of dh[row, j] * y and D[j] = sum over them of dh[row, j], which gives the feature-bias
// gradient sum_entries sum_j W[id, j] dh[row, j] = sum_j W[id, j] D[j] (from the weights before
// this update). A slot with one chunk is updated here, fused with the lazy optimizer; a hot slot's
// chunks leave (g, D) in partial_g / partial_d for sparse_update_hot. Each row has one writer,
// no atomics. l2 applies to W, not to the feature bias. For widths of 32 or less, groups of
// `width` lanes each take every (32 / width)-th entry (for logistic regression, one entry per
// lane); wider, lanes span the width and the entries, one per lane, are handed round by shuffles.
extern "C" __global__ void sparse_backward(int n_chunks, int width, const int* chunk_slot, const int* chunk_begin,
                                           const int* chunk_partial, const int* slot_ptr, const int* slot_entries,
                                           const int* entry_row, const long long* slot_id, const float* y,
                                           const float* dh, float* W, float* W_s0, float* W_s1, float* fb, float* fb_s0,
                                           float* fb_s1, int with_feat_bias, int kind, float lr, float lr_t, float l2,
                                           float* partial_g, float* partial_d) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (c >= n_chunks) return;
    Chunk ch = chunk_at(c, chunk_slot, chunk_begin, chunk_partial, slot_ptr);
    long long id = slot_id[ch.slot];
    long long base = id * (long long)width;
    float fb_partial = 0.0f;
    if (width <= WARP) {
        int groups = WARP / width, group = lane / width, j = lane % width;
        float g = 0.0f, d = 0.0f;
        if (group < groups) {
            for (int e = ch.begin + group; e < ch.end; e += groups) {
                int k = slot_entries[e];
                float dhj = dh[(long long)entry_row[k] * width + j];
                g += dhj * y[k];
                d += dhj;
            }
        }
        for (int step = 1; step < groups; step *= 2) {
            float other_g = __shfl_down_sync(FULL_MASK, g, step * width);
            float other_d = __shfl_down_sync(FULL_MASK, d, step * width);
            if (group % (2 * step) == 0 && group + step < groups) {
                g += other_g;
                d += other_d;
            }
        }
        if (group == 0) {
            if (ch.partial >= 0) {
                partial_g[(long long)ch.partial * width + j] = g;
                partial_d[(long long)ch.partial * width + j] = d;
            } else {
                fb_partial = W[base + j] * d;
                optimizer_step(kind, W + base + j, W_s0 + base + j, W_s1 + base + j, g, lr, lr_t, l2);
            }
        }
    } else {
        int e = ch.begin + lane;
        int k = e < ch.end ? slot_entries[e] : 0;
        long long my_row = e < ch.end ? entry_row[k] * (long long)width : 0;
        float my_y = e < ch.end ? y[k] : 0.0f;
        int count = ch.end - ch.begin;
        for (int j0 = 0; j0 < width; j0 += 4 * WARP) {
            float g[4] = {0.0f, 0.0f, 0.0f, 0.0f}, d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int t = 0; t < count; ++t) {
                long long r = __shfl_sync(FULL_MASK, my_row, t);
                float yv = __shfl_sync(FULL_MASK, my_y, t);
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    int j = j0 + q * WARP + lane;
                    if (j < width) {
                        float dhj = dh[r + j];
                        g[q] += dhj * yv;
                        d[q] += dhj;
                    }
                }
            }
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                int j = j0 + q * WARP + lane;
                if (j >= width) continue;
                if (ch.partial >= 0) {
                    partial_g[(long long)ch.partial * width + j] = g[q];
                    partial_d[(long long)ch.partial * width + j] = d[q];
                } else {
                    fb_partial += W[base + j] * d[q];
                    optimizer_step(kind, W + base + j, W_s0 + base + j, W_s1 + base + j, g[q], lr, lr_t, l2);
                }
            }
        }
    }
    if (with_feat_bias && ch.partial < 0) {
        float g_fb = warp_sum(fb_partial);
        if (lane == 0) optimizer_step(kind, fb + id, fb_s0 + id, fb_s1 + id, g_fb, lr, lr_t, 0.0f);
    }
}

// One warp per hot slot: adds up its chunks' partial (g, D) in batch order, updates its row and
// feature bias as sparse_backward does for a one-chunk slot, and stores its new max_abs (the max
// of the old one and its chunks' maxima) when the model normalizes (this kernel runs in
// training only).
extern "C" __global__ void sparse_update_hot(int n_hot, int width, const int* hot_slot, const int* hot_partial,
                                             const int* slot_ptr, const long long* slot_id, const float* partial_g,
                                             const float* partial_d, const float* chunk_max, float* max_abs, float* W,
                                             float* W_s0, float* W_s1, float* fb, float* fb_s0, float* fb_s1,
                                             int normalized, int kind, float lr, float lr_t, float l2) {
    int h = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (h >= n_hot) return;
    int s = hot_slot[h], first = hot_partial[h];
    int chunks = (slot_ptr[s + 1] - slot_ptr[s] + CHUNK - 1) / CHUNK;
    long long id = slot_id[s];
    long long base = id * (long long)width;
    float fb_partial = 0.0f;
    for (int j = lane; j < width; j += WARP) {
        float g = 0.0f, d = 0.0f;
        for (int i = 0; i < chunks; ++i) {
            g += partial_g[(long long)(first + i) * width + j];
            d += partial_d[(long long)(first + i) * width + j];
        }
        fb_partial += W[base + j] * d;
        optimizer_step(kind, W + base + j, W_s0 + base + j, W_s1 + base + j, g, lr, lr_t, l2);
    }
    if (normalized) {  // the model has feature biases and max_abs
        float g_fb = warp_sum(fb_partial);
        if (lane == 0) optimizer_step(kind, fb + id, fb_s0 + id, fb_s1 + id, g_fb, lr, lr_t, 0.0f);
        float m = 0.0f;
        for (int i = lane; i < chunks; i += WARP) m = fmaxf(m, chunk_max[first + i]);
        m = warp_max(m);
        if (lane == 0) max_abs[id] = fmaxf(max_abs[id], m);
    }
}
