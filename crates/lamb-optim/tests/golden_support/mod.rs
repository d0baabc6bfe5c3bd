//! What every golden-file replay needs, shared by the replays of lamb-optim, lamb-candle and
//! lamb-burn (`#[path]`-included by the last two): one test per family, where the files are, and
//! readers of a document's hyperparameters.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Defines one test per golden family (`golden_<family>`, each calling `$run("<family>")`)
/// and `every_family_is_tested`, which fails when a family directory is not in this list: the
/// families are named here once, for every replay.
#[macro_export]
macro_rules! golden_family_tests {
    ($run:expr) => {
        $crate::golden_family_tests!(@ $run;
            golden_tfa: "tfa",
            golden_pytorch_lamb: "pytorch_lamb",
            golden_torch_optimizer: "torch_optimizer",
            golden_timm: "timm",
            golden_optax: "optax",
            golden_torch_adam: "torch_adam");
    };
    (@ $run:expr; $($test:ident: $family:literal),+) => {
        $(
            #[test]
            fn $test() {
                ($run)($family);
            }
        )+
        #[test]
        fn every_family_is_tested() {
            golden_support::every_family_is_tested(&[$($family),+]);
        }
    };
}

pub fn golden_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden");
    if root.is_dir() {
        return Some(root);
    }
    if std::env::var_os("CI").is_some() {
        panic!("golden files missing at {} (CI is set)", root.display());
    }
    eprintln!(
        "skipping: golden files expected at {} (set CI to make this a failure)",
        root.display()
    );
    None
}

pub fn f32v(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

pub fn num(h: &Value, key: &str) -> Result<f32, String> {
    h.get(key)
        .and_then(Value::as_f64)
        .map(|x| x as f32)
        .ok_or_else(|| format!("hyper.{key} missing or not a number"))
}

pub fn opt_num(h: &Value, key: &str) -> Option<f32> {
    h.get(key).and_then(Value::as_f64).map(|x| x as f32)
}

pub fn flag(h: &Value, key: &str) -> bool {
    h.get(key).and_then(Value::as_bool).unwrap_or(false)
}

pub fn betas(h: &Value) -> Result<(f32, f32), String> {
    let b = h
        .get("betas")
        .and_then(Value::as_array)
        .ok_or("hyper.betas missing")?;
    Ok((b[0].as_f64().unwrap() as f32, b[1].as_f64().unwrap() as f32))
}

pub fn str_list(h: &Value, key: &str) -> Vec<String> {
    match h.get(key) {
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        _ => Vec::new(),
    }
}

/// Exact-name patterns for the names whose mask entry is `false` (optax masks).
pub fn mask_exclusions(h: &Value, key: &str) -> Result<Vec<String>, String> {
    match h.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(true)) => Ok(Vec::new()),
        Some(Value::Object(m)) => Ok(m
            .iter()
            .filter(|(_, v)| v.as_bool() == Some(false))
            .map(|(k, _)| format!("^{}$", regex_escape(k)))
            .collect()),
        Some(v) => Err(format!("unsupported {key}: {v}")),
    }
}

pub fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A golden document, parsed.
pub fn load(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Fails when a family directory under the golden root is not in `tested` (see
/// [`golden_family_tests!`]).
pub fn every_family_is_tested(tested: &[&str]) {
    let Some(root) = golden_root() else { return };
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                tested.contains(&name.as_str()),
                "golden family `{name}` has no test"
            );
        }
    }
}

/// The comparison can fail: each replay (lamb-optim's, the adapters') must reject these files
/// with one rule changed (VARIANTS.md's sensitivities) and accept them unchanged.
pub fn changed_rules_are_rejected(replay_doc: impl Fn(&Value) -> Result<f64, String>) {
    let Some(root) = golden_root() else { return };
    let cases: &[(&str, &str, Value)] = &[
        (
            "tfa/b_lamb_lr0.01_wd0.01.json",
            "weight_decay_rate",
            Value::from(0.0),
        ),
        ("timm/a_lamb_defaults.json", "max_grad_norm", Value::Null),
        (
            "timm/a_lamb_defaults.json",
            "bias_correction",
            Value::from(false),
        ),
        (
            "torch_optimizer/b_lamb_lr0.01_wd0.01_clamp10.json",
            "clamp_value",
            Value::from(100.0),
        ),
        (
            "pytorch_lamb/d_lamb_adam_true.json",
            "adam",
            Value::from(false),
        ),
        (
            "timm/g_lars_momentum0.9_wd1e-4_trust_clip.json",
            "trust_clip",
            Value::from(false),
        ),
        (
            "optax/e_lars_lr1_wd0.1_nesterov.json",
            "nesterov",
            Value::from(false),
        ),
    ];
    for (file, key, value) in cases {
        let mut doc = load(&root.join(file)).unwrap();
        if let Err(e) = replay_doc(&doc) {
            panic!("{file} should pass unchanged: {e}");
        }
        doc["hyper"][*key] = value.clone();
        assert!(
            replay_doc(&doc).is_err(),
            "{file} with {key} = {value} still matched: the test cannot see this rule"
        );
    }
}
