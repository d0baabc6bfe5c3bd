//! The official binary layout reader and writer.

use std::fs;

use lamb_data::{load, read_official, write_official, DataError, Dataset, Splits, CIFAR10_CLASSES};

use crate::common::{names_in, record, write_official_dir};

/// Checks `ds.image(i)` against an official record (planes R, G, B).
fn assert_matches_record(ds: &Dataset, i: usize, rec: &[u8]) {
    assert_eq!(ds.labels[i], rec[0]);
    let img = ds.image(i);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                assert_eq!(img[(y * 32 + x) * 3 + c], rec[1 + c * 1024 + y * 32 + x]);
            }
        }
    }
}

#[test]
fn reads_records_as_nhwc_in_file_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    let recs = write_official_dir(&dir, [2, 1, 1, 3, 1, 2]);
    // The directory itself, its parent and one of its files are accepted.
    for path in [
        dir.clone(),
        tmp.path().to_path_buf(),
        dir.join("test_batch.bin"),
    ] {
        let s = load(&path).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (8, 2));
        assert_eq!(
            (s.train.height, s.train.width, s.train.channels),
            (32, 32, 3)
        );
        assert_eq!(s.train.class_names, CIFAR10_CLASSES.to_vec());
        let train: Vec<&Vec<u8>> = recs[..5].iter().flatten().collect();
        for (i, rec) in train.iter().enumerate() {
            assert_matches_record(&s.train, i, rec);
        }
        for (i, rec) in recs[5].iter().enumerate() {
            assert_matches_record(&s.test, i, rec);
        }
    }
}

#[test]
fn meta_file_names_the_classes_and_bounds_the_labels() {
    let tmp = tempfile::tempdir().unwrap();
    write_official_dir(tmp.path(), [1, 1, 1, 1, 1, 1]);
    fs::write(tmp.path().join("batches.meta.txt"), "a\nb\n\n").unwrap();
    // Labels cycle 0.. so every file's single record has label 0: valid with two classes.
    let s = read_official(tmp.path()).unwrap();
    assert_eq!(s.test.class_names, vec!["a", "b"]);
    // A label of 2 is out of range for two classes.
    let mut rec = record(2, 5);
    rec.extend(record(1, 6));
    fs::write(
        tmp.path().join("data_batch_4.bin"),
        [record(0, 1), rec].concat(),
    )
    .unwrap();
    match read_official(tmp.path()) {
        Err(DataError::LabelOutOfRange {
            record,
            offset,
            label,
            max,
            path,
        }) => {
            assert_eq!((record, offset, label, max), (1, 3073, 2, 1));
            assert!(path.ends_with("data_batch_4.bin"));
        }
        other => panic!("expected LabelOutOfRange, got {other:?}"),
    }
}

#[test]
fn label_above_nine_is_rejected_with_record_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    write_official_dir(tmp.path(), [3, 1, 1, 1, 1, 1]);
    let bytes = [record(1, 1), record(9, 2), record(10, 3)].concat();
    fs::write(tmp.path().join("data_batch_1.bin"), bytes).unwrap();
    let err = read_official(tmp.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                record: 2,
                offset: 6146,
                label: 10,
                max: 9,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("data_batch_1.bin") && msg.contains("0..=9"),
        "{msg}"
    );
}

#[test]
fn missing_file_is_named_with_the_expected_set() {
    let tmp = tempfile::tempdir().unwrap();
    write_official_dir(tmp.path(), [1; 6]);
    fs::remove_file(tmp.path().join("data_batch_3.bin")).unwrap();
    let err = read_official(tmp.path()).unwrap_err();
    assert!(matches!(&err, DataError::MissingFile { name, .. } if name == "data_batch_3.bin"));
    let msg = err.to_string();
    assert!(
        msg.contains("data_batch_5.bin") && msg.contains("test_batch.bin"),
        "{msg}"
    );
}

#[test]
fn a_directory_in_place_of_a_batch_is_named_once() {
    let tmp = tempfile::tempdir().unwrap();
    write_official_dir(tmp.path(), [1; 6]);
    let p = tmp.path().join("data_batch_4.bin");
    fs::remove_file(&p).unwrap();
    fs::create_dir(&p).unwrap();
    let err = read_official(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, DataError::Io { path, .. } if *path == p),
        "{err}"
    );
    assert!(err.to_string().contains("not a regular file"), "{err}");
    // The cause is part of the message, not repeated as a source in error chains.
    assert!(std::error::Error::source(&err).is_none());
}

#[test]
fn length_not_a_multiple_of_the_record_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    write_official_dir(tmp.path(), [1; 6]);
    let mut bytes = [record(0, 1), record(1, 2)].concat();
    bytes.truncate(3073 + 100);
    fs::write(tmp.path().join("test_batch.bin"), bytes).unwrap();
    let err = read_official(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, DataError::BadLength { len: 3173, path } if path.ends_with("test_batch.bin"))
    );
    assert!(err.to_string().contains("3073"), "{err}");
}

#[test]
fn a_split_without_records_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_official_dir(tmp.path(), [1, 1, 1, 1, 1, 0]);
    let err = read_official(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, DataError::EmptySplit { split, .. } if split == "test"),
        "{err}"
    );
}

#[test]
fn an_emptied_training_batch_is_refused_but_tiny_imports_read() {
    let tmp = tempfile::tempdir().unwrap();
    write_official_dir(tmp.path(), [3, 3, 0, 3, 2, 2]);
    let err = read_official(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, DataError::EmptyBatch { path, records: 3, .. }
            if path.ends_with("data_batch_3.bin")),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    // Three training images over five files leave two files empty: that is a valid layout.
    let tiny = tmp.path().join("tiny");
    write_official_dir(&tiny, [0, 1, 0, 1, 1, 2]);
    let splits = read_official(&tiny).unwrap();
    let out = tmp.path().join("out");
    write_official(&splits, &out).unwrap();
    assert_eq!(read_official(&out).unwrap(), splits);
}

#[test]
fn write_then_read_round_trips_and_splits_train_evenly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_official_dir(&src, [2, 1, 2, 1, 1, 2]);
    let mut splits = read_official(&src).unwrap();
    splits.train.class_names = (0..10).map(|i| format!("c{i}")).collect();
    splits.test.class_names = splits.train.class_names.clone();
    let out = tmp.path().join("out");
    let summary = write_official(&splits, &out).unwrap();
    assert_eq!((summary.train, summary.test), (7, 2));
    assert_eq!(summary.files.len(), 7);
    // 7 training images over five files: k*7/5 boundaries 0,1,2,4,5,7.
    let sizes: Vec<u64> = (1..=5)
        .map(|k| {
            fs::metadata(out.join(format!("data_batch_{k}.bin")))
                .unwrap()
                .len()
                / 3073
        })
        .collect();
    assert_eq!(sizes, vec![1, 1, 2, 1, 2]);
    assert_eq!(
        names_in(&out),
        vec![
            "batches.meta.txt",
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin"
        ]
    );
    assert_eq!(read_official(&out).unwrap(), splits);
}

#[test]
fn writing_other_sizes_than_32x32_is_refused() {
    let ds = Dataset {
        images: vec![0; 16 * 16 * 3],
        labels: vec![0],
        height: 16,
        width: 16,
        channels: 3,
        class_names: vec!["a".into()],
    };
    let splits = Splits {
        train: ds.clone(),
        test: ds,
    };
    let tmp = tempfile::tempdir().unwrap();
    let err = write_official(&splits, tmp.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::WrongImageSize {
                found_w: 16,
                expected_w: 32,
                ..
            }
        ),
        "{err}"
    );
    assert!(names_in(tmp.path()).is_empty());
}
