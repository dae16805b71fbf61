//! Training across machines. sparselin supplies the math and Ray (in the Python layer) the
//! cluster: `shard` holds parameter-server shards (rows of the sparse table split by id modulo the
//! shard count, updated by the lazy optimizer on push), `worker` computes a batch's gradients from
//! pulled rows, and `average` synchronizes whole model copies by averaging what changed.

pub mod average;
pub mod shard;
pub mod worker;

pub use average::{average, ModelDelta, SyncPoint, TensorDelta};
pub use shard::{assemble, DenseShard, ParameterShard, ShardCheckpoint, ShardLayout};
pub use worker::PullWorker;
