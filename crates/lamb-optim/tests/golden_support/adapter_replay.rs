//! The driver of the framework adapters' golden replays (lamb-candle, lamb-burn;
//! `#[path]`-included beside `mod.rs` and `adapter_config.rs`): the value comparison at
//! lamb-optim's tolerance, a family run, and [`adapter_golden_tests!`], which defines the same
//! tests in each adapter from its own `replay_doc`.
#![allow(dead_code)]

use super::golden_support::*;
use serde_json::Value;
use std::path::PathBuf;

/// Compares the values of variable `name` after step `step` (from 1) with the recorded ones,
/// within `2e-6*|expected| + 1e-7`, raising `worst` to the largest |diff| seen.
pub fn check_values(
    name: &str,
    step: usize,
    got: &[f32],
    expected: &[f32],
    worst: &mut f64,
) -> Result<(), String> {
    if got.len() != expected.len() {
        return Err(format!(
            "variable `{name}`: {} values, expected {}",
            got.len(),
            expected.len()
        ));
    }
    for (i, (&got, &exp)) in got.iter().zip(expected).enumerate() {
        let d = (got as f64 - exp as f64).abs();
        let tol = 2e-6 * (exp as f64).abs() + 1e-7;
        *worst = worst.max(d);
        if d.is_nan() || d > tol {
            return Err(format!(
                "variable `{name}` step {step} index {i}: got {got:e}, expected {exp:e} (|diff| {d:e} > tol {tol:e})"
            ));
        }
    }
    Ok(())
}

/// Replays every file of one family with `replay_doc`; fails listing every mismatch.
pub fn run_family(family: &str, replay_doc: impl Fn(&Value) -> Result<f64, String>) {
    let Some(root) = golden_root() else { return };
    let dir = root.join(family);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no json files in {}", dir.display());
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        match load(f).and_then(|d| replay_doc(&d)) {
            Ok(worst) => eprintln!("ok   {family}/{name} (max |diff| {worst:.2e})"),
            Err(e) => failures.push(format!("{family}/{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
}

/// Defines the golden tests of an adapter from its `replay_doc(&Value) -> Result<f64, String>`:
/// one test per family, a test that every family directory has one, and the test that a
/// changed rule is rejected.
#[macro_export]
macro_rules! adapter_golden_tests {
    ($replay:ident) => {
        golden_family_tests!(|family| adapter_replay::run_family(family, $replay));
        #[test]
        fn changed_rules_are_rejected() {
            golden_support::changed_rules_are_rejected($replay);
        }
    };
}
