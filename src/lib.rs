//! sparselin: fast training of sparse logistic-regression and MLP models on very sparse data.
//!
//! A batch flows one way: `data` (validated CSR) -> `features` (online normalization) ->
//! `model` (sparse gather-sum layer -> dense layers -> loss -> backward) -> `optim` (lazy update
//! of the touched rows), driven by `train` (epochs, Hogwild threads). `metrics` scores
//! predictions and `checkpoint` saves and loads models. `bindings` is the thin PyO3 layer.

pub mod checkpoint;
pub mod data;
pub mod distributed;
pub mod error;
pub mod features;
pub mod gpu;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod rng;
pub mod train;

#[cfg(feature = "python")]
mod bindings;

pub use error::{Error, Result};
pub use model::{Head, Model, ModelConfig};
