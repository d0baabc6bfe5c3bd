//! Finding the data.

use std::ffi::OsStr;
use std::fs;

use lamb_data::{candidate_paths, locate_data_in, DataError};

#[test]
fn explicit_path_wins_and_never_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("mine.tar.gz");
    fs::write(&p, b"x").unwrap();
    let env = OsStr::new("/definitely/not/here");
    assert_eq!(locate_data_in(Some(&p), Some(env), None, None).unwrap(), p);
    let missing = tmp.path().join("missing");
    let err = locate_data_in(Some(&missing), None, Some(tmp.path()), None).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }));
    assert!(err.to_string().contains("--data"), "{err}");
}

#[test]
fn env_var_is_next() {
    let tmp = tempfile::tempdir().unwrap();
    let env = tmp.path().as_os_str();
    assert_eq!(
        locate_data_in(None, Some(env), None, None).unwrap(),
        tmp.path()
    );
    let err = locate_data_in(None, Some(OsStr::new("/no/such/dir")), None, None).unwrap_err();
    assert!(err.to_string().contains("LAMB_DATA"), "{err}");
    // Empty means unset.
    assert!(matches!(
        locate_data_in(None, Some(OsStr::new("")), None, None),
        Err(DataError::NoData { .. })
    ));
}

#[test]
fn default_locations_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let main = tmp.path().join("main");
    let shared = tmp.path().join("shared/data/cifar10-jpeg.tar.gz");
    fs::create_dir_all(shared.parent().unwrap()).unwrap();
    fs::create_dir_all(&main).unwrap();
    fs::write(&shared, b"x").unwrap();
    assert_eq!(
        locate_data_in(None, None, Some(&main), None).unwrap(),
        shared
    );
    let local = main.join("data/cifar-10-batches-bin");
    fs::create_dir_all(&local).unwrap();
    assert_eq!(
        locate_data_in(None, None, Some(&main), None).unwrap(),
        local
    );
    // From the executable's ancestors when the current directory is elsewhere.
    let exe = main.join("target/release/lamb");
    let elsewhere = tempfile::tempdir().unwrap();
    assert_eq!(
        locate_data_in(None, None, Some(elsewhere.path()), Some(&exe)).unwrap(),
        shared
    );
    let c = candidate_paths(Some(&main), Some(&exe));
    assert_eq!(c[0], local);
    assert!(
        c.contains(&tmp.path().join("main/../shared/data/cifar10-jpeg.tar.gz"))
            || c.contains(&shared)
    );
}

#[test]
fn nothing_found_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("a/b");
    let err = locate_data_in(None, None, Some(&cwd), None).unwrap_err();
    let DataError::NoData { searched } = &err else {
        panic!("expected NoData, got {err:?}");
    };
    assert_eq!(searched[0], cwd.join("data/cifar-10-batches-bin"));
    let msg = err.to_string();
    for needle in [
        "--data PATH",
        "LAMB_DATA",
        "lamb data download",
        "lamb data import",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
    for p in searched {
        assert!(msg.contains(&p.display().to_string()));
    }
}
