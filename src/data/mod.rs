//! Everything that turns user data into validated CSR batches.

pub mod batches;
pub mod csr;
pub mod hashing;
pub mod readers;
pub mod svmlight;
pub mod synthetic;

pub use batches::epoch_order;
pub use csr::{validate_targets, validate_weights, CsrView, Idx, OwnedCsr, Task};
