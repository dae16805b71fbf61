//! Feature transforms: online normalization inside the model, percentile discretization of
//! continuous features before it, and isotonic calibration of its predictions after it.

pub mod discretize;
pub mod isotonic;
pub mod normalize;

pub use discretize::{Calibrator, Discretizer};
pub use isotonic::Isotonic;
pub use normalize::Normalizer;
