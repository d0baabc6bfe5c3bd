//! Data-parallel training over real MPI processes (feature `mpi`; needs Open MPI's `mpirun`):
//! 2 ranks at global batch 100 against one process at batch 100, with and without gradient
//! accumulation. Tolerance as in tests/fit.rs: same arithmetic up to f32 summation order.
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::Command;

use lamb_dist::Launch;

const TOL: f32 = 1e-5;

fn weights(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn check(args: &[&str], out: &Path, mpi_ranks: Option<usize>) {
    let exe = env!("CARGO_BIN_EXE_lamb-dist-check");
    let mut all: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    all.push("--out".into());
    all.push(out.into());
    let mut c = match mpi_ranks {
        Some(n) => {
            let mut l = Launch::new(n);
            l.threads_per_worker = Some(1);
            l.command(exe.as_ref(), &all).unwrap()
        }
        None => {
            let mut c = Command::new(exe);
            c.args(&all).arg("--single");
            c
        }
    };
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e} (is Open MPI's mpirun installed?)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{text}");
    assert!(o.status.success(), "{c:?} failed: {text}");
}

#[test]
fn two_mpi_ranks_match_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single.f32");
    check(&["--batch", "100", "--epochs", "2"], &single, None);
    let reference = weights(&single);
    for acc in ["1", "2"] {
        let two = dir.path().join(format!("two-{acc}.f32"));
        check(
            &["--batch", "100", "--epochs", "2", "--accumulate", acc],
            &two,
            Some(2),
        );
        let w = weights(&two);
        assert_eq!(w.len(), reference.len());
        let d = w
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("2 MPI ranks, accumulate {acc}: max |w diff| {d:e}");
        assert!(
            d <= TOL,
            "2 MPI ranks, accumulate {acc}: max |w diff| {d} > {TOL}"
        );
    }
}
