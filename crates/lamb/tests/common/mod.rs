//! Helpers shared by the end-to-end tests: the binary, the shared data, a decode cache.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `lamb` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_lamb");

/// The shared archive, or `None` (skip) when it is missing outside CI.
pub fn data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cifar10-jpeg.tar.gz");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI: the shared data is missing at {}", p.display());
    }
    eprintln!("skipping: CIFAR-10 archive expected at {}", p.display());
    None
}

/// A decode cache shared by the tests (the archive is decoded once).
pub fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("lamb-test-cache")
}

/// `program` in `cwd` with the test environment: the shared cache, no `LAMB_DATA`, and Open
/// MPI allowed to run as root (CI runs as root).
pub fn command(program: &str, cwd: &Path) -> Command {
    let mut c = Command::new(program);
    c.current_dir(cwd)
        .env("LAMB_CACHE", cache())
        .env_remove("LAMB_DATA")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

/// `lamb` run in `cwd` with the test environment.
pub fn lamb(cwd: &Path) -> Command {
    command(BIN, cwd)
}

/// Runs `c`, failing the test on a panic message.
pub fn run(c: &mut Command) -> Output {
    let o = c.output().expect("running lamb");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "lamb panicked:\n{err}");
    o
}

/// Runs `c` and requires success.
pub fn ok(c: &mut Command) -> Output {
    let o = run(c);
    assert!(
        o.status.success(),
        "lamb failed ({:?}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Standard output of a finished command, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `c` and requires failure; returns stderr.
pub fn fail(c: &mut Command) -> String {
    let o = run(c);
    assert!(
        !o.status.success(),
        "lamb should have failed:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}
