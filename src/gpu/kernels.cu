// sparselin GPU kernels, compiled at run time by NVRTC for the device's compute capability.
// The math is the CPU core's (BRIEF section 2); the comments say how the work is split.
//
// A batch arrives as: n rows; its non-zeros ("entries") in batch order with their row
// (entry_row), the index of their feature among the batch's distinct ids (entry_slot) and value;
// row_ptr[n + 1] over the entries; the distinct ids (slot_id[U]); and the entries grouped by
// slot, in batch order inside a slot (slot_ptr[U + 1], slot_entries[nnz]): the transpose the
// host builds, so that every per-feature reduction below is one warp's work, without atomics.

#define WARP 32
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

// Online normalization, one thread per distinct feature, over its entries in batch order:
// training raises max_abs as it goes (each entry sees the max of what came before it and
// itself) and stores it back; inference reads max_abs and the entry's own |v| only.
extern "C" __global__ void normalize_entries(int n_slots, const int* slot_ptr, const int* slot_entries,
                                             const long long* slot_id, const float* values, float* max_abs,
                                             const float* feat_bias, float* y, int training) {
    int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= n_slots) return;
    long long id = slot_id[s];
    float m = max_abs[id];
    float b = feat_bias[id];
    for (int e = slot_ptr[s]; e < slot_ptr[s + 1]; ++e) {
        int k = slot_entries[e];
        float v = values[k];
        float scale = fmaxf(m, fabsf(v));
        if (training) m = scale;
        y[k] = v / fmaxf(scale, MIN_SCALE) + b;
    }
    if (training) max_abs[id] = m;
}

// Without normalization the layer input is the raw value.
extern "C" __global__ void copy_values(int nnz, const float* values, float* y) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < nnz) y[k] = values[k];
}

// h[b, :] = bias + sum over row b's entries of W[id, :] * y: one warp per row, lanes across the
// width, so each W row is read as consecutive floats (coalesced).
extern "C" __global__ void gather_forward(int n_rows, int width, const int* row_ptr, const int* entry_slot,
                                          const long long* slot_id, const float* y, const float* W,
                                          const float* bias, float* h) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= n_rows) return;
    for (int j = lane; j < width; j += WARP) {
        float acc = bias[j];
        for (int k = row_ptr[row]; k < row_ptr[row + 1]; ++k) {
            acc += W[slot_id[entry_slot[k]] * (long long)width + j] * y[k];
        }
        h[(long long)row * width + j] = acc;
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
// d_out[b, o]: one thread per weight (the batch is the reduction axis, read coalesced across o).
extern "C" __global__ void dense_grad_weights(int n_rows, int n_in, int n_out, const float* x, const float* d_out,
                                              float* grad_W, float* grad_b, int relu_input) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (n_in + 1) * n_out) return;
    int i = t / n_out, o = t % n_out;
    float acc = 0.0f;
    if (i < n_in) {
        for (int b = 0; b < n_rows; ++b) {
            float xi = x[(long long)b * n_in + i];
            if (relu_input) xi = fmaxf(xi, 0.0f);
            acc += xi * d_out[(long long)b * n_out + o];
        }
        grad_W[t] = acc;
    } else {
        for (int b = 0; b < n_rows; ++b) acc += d_out[(long long)b * n_out + o];
        grad_b[o] = acc;
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

// Column sums of dh (the sparse layer's bias gradient), one thread per column.
extern "C" __global__ void column_sums(int n_rows, int width, const float* dh, float* out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width) return;
    float acc = 0.0f;
    for (int b = 0; b < n_rows; ++b) acc += dh[(long long)b * width + j];
    out[j] = acc;
}

// A dense tensor's optimizer step, one thread per element.
extern "C" __global__ void dense_update(int n, int kind, float* w, float* s0, float* s1, const float* grad, float lr,
                                        float lr_t, float l2) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) optimizer_step(kind, w + t, s0 + t, s1 + t, grad[t], lr, lr_t, l2);
}

// Backward of the sparse layer fused with the lazy optimizer, one warp per distinct feature:
// the row gradient g[j] = sum over the feature's entries of dh[row, j] * y is a segmented
// reduction over the grouped entries (no atomics on hot rows); the feature-bias gradient
// sum_entries sum_j W[id, j] dh[row, j] = sum_j W[id, j] D[j], with D[j] = sum_entries dh[row, j],
// is taken from the weights before this update. Then the row and its feature bias are updated
// in place: each row has exactly one writer. l2 applies to W, not to the feature bias.
extern "C" __global__ void sparse_backward_update(int n_slots, int width, const int* slot_ptr, const int* slot_entries,
                                                  const int* entry_row, const long long* slot_id, const float* y,
                                                  const float* dh, float* W, float* W_s0, float* W_s1, float* fb,
                                                  float* fb_s0, float* fb_s1, int with_feat_bias, int kind, float lr,
                                                  float lr_t, float l2) {
    int s = (blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (s >= n_slots) return;
    long long base = slot_id[s] * (long long)width;
    float fb_partial = 0.0f;
    for (int j = lane; j < width; j += WARP) {
        float g = 0.0f, d = 0.0f;
        for (int e = slot_ptr[s]; e < slot_ptr[s + 1]; ++e) {
            int k = slot_entries[e];
            float dhj = dh[(long long)entry_row[k] * width + j];
            g += dhj * y[k];
            d += dhj;
        }
        fb_partial += W[base + j] * d;
        optimizer_step(kind, W + base + j, W_s0 + base + j, W_s1 + base + j, g, lr, lr_t, l2);
    }
    if (with_feat_bias) {
        float g_fb = warp_sum(fb_partial);
        if (lane == 0) {
            long long id = slot_id[s];
            optimizer_step(kind, fb + id, fb_s0 + id, fb_s1 + id, g_fb, lr, lr_t, 0.0f);
        }
    }
}
