//! CIFAR-10 and image-folder datasets for the `lamb` engine: readers for the official binary
//! layout and for image archives, batching with pixels scaled by 1/255, and per-epoch shuffling
//! derived from the run's seed and the epoch number.
//!
//! Entry points: [`locate_data`] finds the data, [`load`] reads any supported layout,
//! [`load_cached`] reads an archive through an import cache, [`import_archive`] converts an
//! archive into the official binary layout, and [`download_official`] fetches the official
//! release.

#![warn(missing_docs)]

mod dataset;
mod download;
mod error;
mod images;
mod load;
mod locate;
mod official;

pub use dataset::*;
pub use download::{download_official, extract_official, DownloadSpec};
pub use error::{DataError, RECORD_LEN};
pub use images::{is_image_name, read_archive, read_image_folder, MAX_IMAGE_BYTES};
pub use load::{
    cache_entry_dir, default_cache_dir, detect, import_archive, load, load_cached, Layout, Splits,
    CACHE_VERSION,
};
pub use locate::{
    candidate_paths, locate_data, locate_data_in, no_data_help, DATA_ENV, SHARED_ARCHIVE,
};
pub use official::{
    encode_batch, official_dir, parse_batch, parse_meta, read_official, write_official,
    ImportSummary, META_FILE, OFFICIAL_SUBDIR, TEST_FILE, TRAIN_FILES,
};
