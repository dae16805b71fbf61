//! Feature transforms applied inside the model.

pub mod normalize;

pub use normalize::Normalizer;
