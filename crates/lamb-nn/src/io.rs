//! Weights as safetensors: Keras names (`conv2d/kernel`, ...) and layouts (HWIO conv kernels,
//! (in, out) dense kernels), f32, written atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::{Model, NnError};

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NnError {
    let path = path.to_path_buf();
    move |cause| NnError::Io {
        action,
        path,
        cause,
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NnError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| NnError::InvalidArgument {
        name: "path",
        value: path.display().to_string(),
        valid: "a file path".into(),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(bytes).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming into", path))?;
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl Model {
    /// Every tensor saved with the weights: the parameters, then the state (BatchNormalization's
    /// moving statistics), as (name, shape, values), in model order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut t = self.params();
        t.extend(self.state());
        t
    }

    /// Saves every parameter and state tensor as f32 under its Keras name, atomically, with
    /// the model's description (Keras JSON, [`Model::description`]) in the metadata under
    /// `keras_model` when it has one.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), NnError> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors()
            .into_iter()
            .map(|(name, shape, values)| {
                (
                    name,
                    shape,
                    values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (name, shape, data) in &bytes {
            let view =
                TensorView::new(Dtype::F32, shape.clone(), data).map_err(|e| NnError::Weights {
                    path: path.to_path_buf(),
                    message: format!("tensor `{name}`: {e}"),
                })?;
            views.push((name.clone(), view));
        }
        let meta = self
            .description()
            .map(|d| std::collections::HashMap::from([("keras_model".to_string(), d)]));
        let buf = safetensors::serialize(views, &meta).map_err(|e| NnError::Weights {
            path: path.to_path_buf(),
            message: format!("serialising: {e}"),
        })?;
        write_atomic(path, &buf)
    }

    fn param_count_tensors(&self) -> usize {
        self.param_iter().count()
    }

    /// Loads every parameter and state tensor from a safetensors file written by [`Model::save_safetensors`] or
    /// converted from Keras (a `:0` suffix on names is accepted). Every model tensor must be
    /// present with dtype F32 and the model's shape, no other tensor may be present, and no
    /// value may be NaN or infinite. On error the model is unchanged.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<(), NnError> {
        let bytes = crate::files::read_safetensors(path)?;
        let err = |message: String| NnError::Weights {
            path: path.to_path_buf(),
            message,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            err(format!(
                "not a valid safetensors file ({} bytes; truncated, or another format): {e}",
                bytes.len()
            ))
        })?;
        let tensors = self.tensors();
        let names: Vec<String> = tensors.iter().map(|t| t.0.clone()).collect();
        let n_params = self.param_count_tensors();
        let mut loaded: Vec<(String, Vec<f32>)> = Vec::with_capacity(names.len());
        for (name, shape, _) in tensors {
            let with_suffix = format!("{name}:0");
            if st.tensor(&name).is_ok() && st.tensor(&with_suffix).is_ok() {
                return Err(err(format!(
                    "both `{name}` and `{with_suffix}` are present: which one is the weight is \
                     ambiguous; keep one"
                )));
            }
            let view = st
                .tensor(&name)
                .or_else(|_| st.tensor(&with_suffix))
                .map_err(|_| err(format!("missing tensor `{name}` (expected F32 {shape:?})")))?;
            if view.dtype() != Dtype::F32 {
                return Err(err(format!(
                    "tensor `{name}`: dtype {:?}, expected F32",
                    view.dtype()
                )));
            }
            if view.shape() != shape.as_slice() {
                return Err(err(format!(
                    "tensor `{name}`: shape {:?}, expected {shape:?}",
                    view.shape()
                )));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(err(format!(
                    "tensor `{name}`: non-finite value {v} at element {i}"
                )));
            }
            loaded.push((name, values));
        }
        let extra: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| !names.iter().any(|m| m == *n || format!("{m}:0") == **n))
            .cloned()
            .collect();
        if !extra.is_empty() {
            return Err(err(format!(
                "unexpected tensors {extra:?}; the model has {names:?}"
            )));
        }
        for (k, (name, values)) in loaded.into_iter().enumerate() {
            if k < n_params {
                self.set_param(&name, &values)?;
            } else {
                self.set_state(&name, &values)?;
            }
        }
        Ok(())
    }
}
