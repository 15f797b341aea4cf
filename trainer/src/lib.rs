//! Training CancerNet with burn: the YAML config, the data loader, Keras-style Adagrad, the
//! training loop with checkpoints and resume. The `trainer` binary is a thin CLI over this.

pub mod alloc;
pub mod average;
pub mod checkpoint;
pub mod config;
pub mod cv;
pub mod data;
pub mod device;
pub mod epoch;
pub mod evaluate;
pub mod optim;
pub mod precise_bn;
pub mod report;
pub mod splits;
pub mod test_report;
pub mod threshold;
pub mod train;
pub mod variants;
