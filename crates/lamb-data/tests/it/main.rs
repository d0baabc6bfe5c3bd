//! Integration tests of lamb-data on small datasets the tests write themselves, plus the shared
//! CIFAR-10 archive when it is present.

mod common;

mod cache;
mod download;
mod formats;
mod fuzz_seeds;
mod hardening;
mod images;
mod locate;
mod official;
mod props;
mod real_data;
