//! What every golden-file replay needs, shared by the replays of lamb-optim, lamb-candle and
//! lamb-burn (`#[path]`-included by the last two): the families, where the files are, and
//! readers of a document's hyperparameters.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};

pub const FAMILIES: &[&str] = &[
    "tfa",
    "pytorch_lamb",
    "torch_optimizer",
    "timm",
    "optax",
    "torch_adam",
];

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
