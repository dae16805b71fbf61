//! The sparse linear layer (twml FullSparse): `h[b, :] = sum_{k in row b} W[id_k, :] y_k + B`,
//! computed as a gather-sum of W rows (embedding_lookup_sparse), never as a matmul. The backward
//! pass produces gradients only for the rows present in the batch, summed per distinct id.

use crate::data::{CsrView, Idx};
use crate::error::Result;
use crate::features::Normalizer;
use crate::model::workspace::{zeroed, Workspace};
use crate::optim::{OptimizerKind, Param};
use crate::rng::hash_to_unit;
use crate::train::shared::load;
use crate::train::SharedF32;

pub struct SparseLinear {
    pub weight: Param,
    pub bias: Param,
    pub width: usize,
}

impl SparseLinear {
    /// `init_scale = 0` gives zeros (logistic regression, FTRL); otherwise W ~ U(-s, s) drawn
    /// from `(seed, index)`.
    pub fn new(n_features: usize, width: usize, init_scale: f32, seed: u64, optimizer: OptimizerKind) -> Result<Self> {
        let n = n_features.checked_mul(width).ok_or_else(|| crate::invalid!("n_features * sparse_width overflows"))?;
        let w = if init_scale == 0.0 {
            SharedF32::zeros(n)?
        } else {
            let s = init_scale as f64;
            SharedF32::from_fn(n, |i| ((2.0 * hash_to_unit(seed, i as u64) - 1.0) * s) as f32)?
        };
        Ok(Self {
            weight: Param::new(w, vec![n_features, width], optimizer, true)?,
            bias: Param::new(SharedF32::zeros(width)?, vec![width], optimizer, false)?,
            width,
        })
    }

    /// Training forward over the batch rows: fills `ws.pre[0]` (B x width) and records, per
    /// non-zero, its slot and its input y (normalized, max_abs updated in order) for backward.
    /// Each distinct id's W row is loaded once into `ws.row_cache`.
    #[inline(never)] // a per-batch call: keeps profiles readable
    pub fn forward_train<P: Idx, I: Idx>(
        &self,
        x: &CsrView<'_, P, I>,
        rows: &[u32],
        norm: Option<&Normalizer>,
        ws: &mut Workspace,
    ) {
        let width = self.width;
        let nnz: usize = rows.iter().map(|&r| x.row(r as usize).0.len()).sum();
        ws.slots.reset(nnz);
        ws.nnz_slot.clear();
        ws.nnz_y.clear();
        ws.row_end.clear();
        ws.row_cache.clear();
        let bias = &mut ws.sparse_bias;
        zeroed(bias, width);
        self.bias.values.copy_to(bias);
        // The batch's ids in order, so the loop below can prefetch the normalization state and
        // W row of the id PREFETCH_DISTANCE non-zeros ahead (random rows of a large table).
        const PREFETCH_DISTANCE: usize = 12;
        ws.nnz_ids.clear();
        for &r in rows {
            ws.nnz_ids.extend(x.row(r as usize).0.iter().map(|id| id.as_usize() as u64));
        }
        let h = &mut ws.pre[0];
        zeroed(h, rows.len() * width);
        let mut k = 0;
        for (b, &r) in rows.iter().enumerate() {
            let h_row = &mut h[b * width..(b + 1) * width];
            h_row.copy_from_slice(bias);
            let (ids, values) = x.row(r as usize);
            for (&id, &v) in ids.iter().zip(values) {
                if let Some(&ahead) = ws.nnz_ids.get(k + PREFETCH_DISTANCE) {
                    let ahead = ahead as usize;
                    if let Some(n) = norm {
                        n.max_abs.prefetch(ahead, 1);
                        n.feat_bias.values.prefetch(ahead, 1);
                    }
                    self.weight.values.prefetch(ahead * width, width);
                }
                k += 1;
                let id = id.as_usize();
                let y = match norm {
                    Some(n) => n.train_value(id, v),
                    None => v,
                };
                let (slot, new) = ws.slots.slot_of(id as u64);
                let slot = slot as usize;
                if new {
                    let start = ws.row_cache.len();
                    ws.row_cache.resize(start + width, 0.0);
                    self.weight.values.load_into(id * width, &mut ws.row_cache[start..]);
                }
                let w_row = &ws.row_cache[slot * width..(slot + 1) * width];
                for (hj, &w) in h_row.iter_mut().zip(w_row) {
                    *hj += w * y;
                }
                ws.nnz_slot.push(slot as u32);
                ws.nnz_y.push(y);
            }
            ws.row_end.push(ws.nnz_y.len());
        }
    }

    /// Inference forward of one row into `h` (width).
    #[inline]
    pub fn forward_infer_row<I: Idx>(&self, ids: &[I], values: &[f32], norm: Option<&Normalizer>, bias: &[f32], h: &mut [f32]) {
        let width = self.width;
        h.copy_from_slice(bias);
        for (&id, &v) in ids.iter().zip(values) {
            let id = id.as_usize();
            let y = match norm {
                Some(n) => n.infer_value(id, v),
                None => v,
            };
            let w_row = self.weight.values.range(id * width, width);
            for (hj, wa) in h.iter_mut().zip(w_row) {
                *hj += load(wa) * y;
            }
        }
    }

    /// Given `dh` (B x width), fills the per-slot row gradients, the feature-bias gradients (when
    /// normalizing) and the bias gradient.
    #[inline(never)] // a per-batch call: keeps profiles readable
    pub fn backward(&self, dh: &[f32], with_feat_bias: bool, ws: &mut Workspace) {
        debug_assert_eq!(ws.row_cache.len(), ws.slots.len() * self.width);
        let width = self.width;
        let n_unique = ws.slots.len();
        zeroed(&mut ws.grad_rows, n_unique * width);
        zeroed(&mut ws.grad_feat_bias, if with_feat_bias { n_unique } else { 0 });
        super::dense::column_sums(dh, width, &mut ws.bias_acc);
        ws.grad_sparse_bias.clear();
        ws.grad_sparse_bias.extend(ws.bias_acc.iter().map(|&s| s as f32));
        let mut start = 0;
        for (b, &end) in ws.row_end.iter().enumerate() {
            let dh_row = &dh[b * width..(b + 1) * width];
            for k in start..end {
                let slot = ws.nnz_slot[k] as usize;
                let y = ws.nnz_y[k];
                let g_row = &mut ws.grad_rows[slot * width..(slot + 1) * width];
                for (g, &d) in g_row.iter_mut().zip(dh_row) {
                    *g += d * y;
                }
                if with_feat_bias {
                    let w_row = &ws.row_cache[slot * width..(slot + 1) * width];
                    let dy: f32 = w_row.iter().zip(dh_row).map(|(&w, &d)| w * d).sum();
                    ws.grad_feat_bias[slot] += dy;
                }
            }
            start = end;
        }
    }
}
