//! Online per-feature normalization (twml's SparseMaxNorm), BRIEF section 2:
//! training: `max_abs[i] = max(max_abs[i], |v|)`, then `x = v / max(max_abs[i], 1e-5)`;
//! inference: `x = v / max(max(max_abs[i], |v|), 1e-5)` without updating; then
//! `y = x + feat_bias[i]`. `max_abs` is not trained; `feat_bias` is (gradient of y).
//! So x is in [-1, 1] and a value of 1e6 cannot blow up the step size, and the bias tells
//! "present with value 0" from "absent".

use crate::error::Result;
use crate::optim::{OptimizerKind, Param};
use crate::train::SharedF32;

pub const MIN_SCALE: f32 = 1e-5;

pub struct Normalizer {
    pub max_abs: SharedF32,
    pub feat_bias: Param,
}

impl Normalizer {
    pub fn new(n_features: usize, optimizer: OptimizerKind) -> Result<Self> {
        Ok(Self {
            max_abs: SharedF32::zeros(n_features)?,
            feat_bias: Param::new(SharedF32::zeros(n_features)?, vec![n_features], optimizer, false)?,
        })
    }

    /// Training-time value: updates `max_abs` first.
    #[inline(always)]
    pub fn train_value(&self, id: usize, v: f32) -> f32 {
        let scale = self.max_abs.fetch_max_nonneg(id, v.abs());
        Self::scaled(v, scale) + self.feat_bias.values.get(id)
    }

    /// `v` over its feature's scale, before the feature bias is added.
    #[inline(always)]
    pub fn scaled(v: f32, scale: f32) -> f32 {
        v / scale.max(MIN_SCALE)
    }

    /// Inference-time value: reads `max_abs` only.
    #[inline(always)]
    pub fn infer_value(&self, id: usize, v: f32) -> f32 {
        let scale = self.max_abs.get(id).max(v.abs());
        v / scale.max(MIN_SCALE) + self.feat_bias.values.get(id)
    }
}
