//! Image-classification datasets for the `lamb` engine: readers for the official CIFAR-10 and
//! CIFAR-100 binary layouts, MNIST/Fashion-MNIST IDX files, image folders and `.tar`/`.tar.gz`/
//! `.zip` archives of any image size (grayscale or RGB), an optional resize, a checksummed
//! decoded-data cache, data fingerprints, batching with pixels scaled by 1/255, and per-epoch
//! shuffling derived from the run's seed and the epoch number.
//!
//! Entry points: [`locate_data`] finds the data, [`load`] / [`load_with`] read any supported
//! layout, [`load_cached`] / [`load_cached_with`] read an archive through the cache,
//! [`import_archive`] converts an archive into the CIFAR-10 binary layout, and
//! [`download_official`] fetches the official release.
//!
//! Module dependencies run one way: `error`, `options` <- `dataset`, `fsutil` <- the readers
//! (`official`, `cifar100`, `idx`, `images`, `resize`) <- `cache`, `load`, `download`; `locate`
//! uses only `error` and `fsutil`.

#![warn(missing_docs)]

mod cache;
mod cifar100;
mod dataset;
mod download;
mod error;
mod fsutil;
mod idx;
mod images;
mod load;
mod locate;
mod official;
mod options;
mod pipeline;
mod resize;

pub use cache::{cache_entry_path, read_cache_entry, write_cache_entry, CACHE_VERSION};
pub use cifar100::{
    cifar100_dir, parse_cifar100, read_cifar100, CIFAR100_RECORD_LEN, CIFAR100_SUBDIR,
    CIFAR100_TEST, CIFAR100_TRAIN,
};
pub use dataset::*;
pub use download::{
    download_dataset, download_official, extract_cifar100, extract_official, fetch_verified,
    DownloadSpec, OfficialData,
};
pub use error::{no_data_help, DataError, RECORD_LEN};
pub use fsutil::{check_openable, open_regular, read_capped};
pub use idx::{idx_class_names, is_idx_dir, parse_idx, read_idx, FASHION_MNIST_CLASSES, IDX_FILES};
pub use images::{is_image_name, read_archive, read_image_folder, MAX_IMAGE_BYTES};
pub use load::{
    default_cache_dir, detect, import_archive, load, load_cached, load_cached_with, load_with,
    CacheUse, Layout, Loaded,
};
pub use locate::{
    candidate_paths, locate_data, locate_data_in, locate_or_download, locate_or_download_in,
    AutoDownload, DATA_ENV, SHARED_ARCHIVE,
};
pub use official::{
    encode_batch, official_dir, parse_batch, parse_meta, read_official, write_official,
    ImportSummary, META_FILE, OFFICIAL_SUBDIR, TEST_FILE, TRAIN_FILES,
};
pub use options::{Cifar100Labels, LoadOptions, Resize, MAX_RESIZE_SIDE};
pub use pipeline::{
    augment_params, shift_flip, stratified_split, Augment, InputPipeline, Standardize,
};
pub use resize::{resize_dataset, resize_pixels};
