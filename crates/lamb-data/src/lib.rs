//! CIFAR-10 and image-folder datasets for the `lamb` engine: readers for the official binary
//! layout and for image archives, batching with pixels scaled by 1/255, and per-epoch shuffling
//! derived from the run's seed and the epoch number.

mod dataset;
pub use dataset::*;
