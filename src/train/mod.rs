//! Running many batches: the epoch loop, threads, progress and stopping.

pub mod baseline;
pub mod columns;
pub mod row_partition;
pub mod shared;
pub mod stream;
pub mod trainer;

pub use shared::SharedF32;
pub use trainer::{fit, FitOptions, FitReport, Parallel, Progress, TrainData};
