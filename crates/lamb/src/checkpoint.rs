//! Checkpoints: everything needed to continue a run exactly (weights, optimizer state with its
//! moments and step counts, position in the run with the epoch's running sums, history so
//! far) in one safetensors file, written atomically. Shuffling needs no saved RNG state: each
//! epoch's order follows from the seed and the epoch number.
//!
//! Layout: tensors `model/<param>` (the weights, Keras names and shapes) and
//! `optim/<tensor>/<slot>` (optimizer slots); metadata `format`, `progress` (TOML of
//! [`FitProgress`], which keeps NaN and infinities exact), `optimizer` (JSON of the
//! [`OptimizerState`] without slot data), `config` (the settings that decide the numbers) and
//! `sha256` (over every tensor's name, shape and bytes), so a corrupt, truncated or mismatched
//! file is refused with a message instead of resuming wrongly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lamb_nn::{FitProgress, Model};
use lamb_optim::{Optimizer, OptimizerState, TensorState};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};

use crate::atomic::write_atomic;

/// Format tag stored in every checkpoint.
pub const FORMAT: &str = "lamb-checkpoint-1";

/// File name of the checkpoint inside a run directory's `checkpoint/` folder.
pub const FILE: &str = "checkpoint/checkpoint.safetensors";

/// Why a checkpoint could not be written, read or applied.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The checkpoint file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: anyhow::Error,
    },
    /// The file is not a complete, intact checkpoint.
    #[error("checkpoint {path} is corrupt or truncated: {message}; it cannot be resumed (start a new run, or restore the file)")]
    Corrupt {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint belongs to another model, optimizer or configuration.
    #[error("checkpoint {path} does not match this run: {message}")]
    Mismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// What differs.
        message: String,
    },
}

/// The content of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Position (epoch, step, running sums) and history so far.
    pub progress: FitProgress,
    /// Weights: name, shape, values.
    pub params: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Full optimizer state.
    pub optimizer: OptimizerState,
    /// The settings that decide the numbers ([`crate::config::RunConfig::training_key`]).
    pub config_key: String,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn digest<'a>(items: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>) -> String {
    let mut sorted: Vec<_> = items.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, shape, data) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Checkpoint {
    /// Captures the model's weights and the optimizer's state at `progress`.
    pub fn capture(
        model: &Model,
        opt: &dyn Optimizer,
        progress: &FitProgress,
        config_key: &str,
    ) -> Self {
        Checkpoint {
            progress: progress.clone(),
            params: model
                .params()
                .into_iter()
                .map(|(n, s, v)| (n, s, v.to_vec()))
                .collect(),
            optimizer: opt.state(),
            config_key: config_key.to_string(),
        }
    }

    /// Serialises the checkpoint to bytes.
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (n, s, v) in &self.params {
            tensors.push((format!("model/{n}"), s.clone(), f32_bytes(v)));
        }
        let mut skeleton = self.optimizer.clone();
        for t in &mut skeleton.tensors {
            for (slot, data) in &mut t.slots {
                tensors.push((
                    format!("optim/{}/{}", t.name, slot),
                    vec![data.len()],
                    f32_bytes(data),
                ));
                data.clear();
            }
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("progress".to_string(), toml::to_string(&self.progress)?);
        meta.insert("optimizer".to_string(), serde_json::to_string(&skeleton)?);
        meta.insert("config".to_string(), self.config_key.clone());
        meta.insert(
            "sha256".to_string(),
            digest(
                tensors
                    .iter()
                    .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
            ),
        );
        let views = tensors
            .iter()
            .map(|(n, s, d)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), d)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        Ok(safetensors::serialize(views, &Some(meta))?)
    }

    /// Writes the checkpoint atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |e: anyhow::Error| CheckpointError::Io {
            path: path.into(),
            source: e,
        };
        let bytes = self.to_bytes().map_err(io)?;
        write_atomic(path, &bytes).map_err(io)
    }

    /// Reads and verifies a checkpoint (format, checksum, structure).
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io {
            path: path.into(),
            source: e.into(),
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses and verifies checkpoint bytes; `path` names the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |m: String| CheckpointError::Corrupt {
            path: path.into(),
            message: m,
        };
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt(format!("not a readable safetensors file ({e:?})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| corrupt(format!("unreadable header ({e:?})")))?;
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| corrupt("no metadata: not a lamb checkpoint".into()))?;
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| corrupt(format!("metadata key `{k}` missing")))
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(corrupt(format!("format `{format}`, expected `{FORMAT}`")));
        }
        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(corrupt(format!(
                    "tensor `{name}` has dtype {:?}, expected F32",
                    view.dtype()
                )));
            }
            tensors.push((name, view.shape().to_vec(), view.data().to_vec()));
        }
        let sum = digest(
            tensors
                .iter()
                .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
        );
        if &sum != get("sha256")? {
            return Err(corrupt("checksum mismatch: tensor data was altered".into()));
        }
        let progress: FitProgress = toml::from_str(get("progress")?)
            .map_err(|e| corrupt(format!("progress record: {e}")))?;
        let mut optimizer: OptimizerState = serde_json::from_str(get("optimizer")?)
            .map_err(|e| corrupt(format!("optimizer record: {e}")))?;
        let mut by_name: HashMap<String, (Vec<usize>, Vec<u8>)> =
            tensors.into_iter().map(|(n, s, d)| (n, (s, d))).collect();
        for TensorState {
            name, len, slots, ..
        } in &mut optimizer.tensors
        {
            for (slot, data) in slots.iter_mut() {
                let key = format!("optim/{name}/{slot}");
                let (_, d) = by_name
                    .remove(&key)
                    .ok_or_else(|| corrupt(format!("optimizer slot `{key}` missing")))?;
                *data = bytes_f32(&d);
                if data.len() != *len {
                    return Err(corrupt(format!(
                        "optimizer slot `{key}` has {} values, expected {len}",
                        data.len()
                    )));
                }
            }
        }
        let mut params: Vec<(String, Vec<usize>, Vec<f32>)> = by_name
            .into_iter()
            .map(|(n, (s, d))| match n.strip_prefix("model/") {
                Some(p) => Ok((p.to_string(), s, bytes_f32(&d))),
                None => Err(corrupt(format!("unexpected tensor `{n}`"))),
            })
            .collect::<Result<_, _>>()?;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Checkpoint {
            progress,
            params,
            optimizer,
            config_key: get("config")?.clone(),
        })
    }

    /// Puts the weights into `model` and the state into `opt`, after checking that both fit.
    /// `config_key` is the current run's; a different one means another configuration.
    pub fn restore(
        &self,
        path: &Path,
        model: &mut Model,
        opt: &mut dyn Optimizer,
        config_key: &str,
    ) -> Result<(), CheckpointError> {
        let mismatch = |m: String| CheckpointError::Mismatch {
            path: path.into(),
            message: m,
        };
        if self.config_key != config_key {
            return Err(mismatch(format!(
                "it was written with other settings.\n  checkpoint: {}\n  this run:   {}",
                self.config_key.replace('\n', "; "),
                config_key.replace('\n', "; ")
            )));
        }
        if self.optimizer.optimizer != opt.name() {
            return Err(mismatch(format!(
                "it holds the state of optimizer `{}`, this run uses `{}`",
                self.optimizer.optimizer,
                opt.name()
            )));
        }
        let ours = model.params();
        let here: Vec<String> = ours.iter().map(|(n, s, _)| format!("{n} {s:?}")).collect();
        let there: Vec<String> = self
            .params
            .iter()
            .map(|(n, s, _)| format!("{n} {s:?}"))
            .collect();
        let mut here_sorted = here.clone();
        here_sorted.sort();
        if here_sorted != there {
            return Err(mismatch(format!(
                "it was written for another model.\n  checkpoint tensors: {}\n  this model:         {}",
                there.join(", "),
                here.join(", ")
            )));
        }
        drop(ours);
        opt.load_state(&self.optimizer)
            .map_err(|e| mismatch(format!("optimizer state: {e}")))?;
        for (n, _, v) in &self.params {
            model
                .set_param(n, v)
                .map_err(|e| mismatch(format!("weights: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamb_nn::{classic_cnn, Activation, Padding, Sequential};
    use lamb_optim::{Lamb, LambConfig};

    fn trained() -> (Model, Lamb, FitProgress) {
        let mut model = classic_cnn(Activation::Relu, 3).unwrap();
        let mut opt = Lamb::new(LambConfig::default()).unwrap();
        let x: Vec<f32> = (0..4 * 32 * 32 * 3)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        model.train_step(&x, &[1, 2, 3, 4], &mut opt).unwrap();
        let mut history = crate::report::tests::history(&[0.5, 0.25], &[1.5, f64::NAN]);
        history.epochs[1].val_accuracy = None;
        history.epochs[0].trust_ratios[1].mean = f64::INFINITY;
        let telemetry = vec![lamb_nn::TelemetryAccum {
            name: "conv2d/kernel".into(),
            sum: 0.1 + 0.2,
            count: 3,
            min: f64::NEG_INFINITY,
            max: 1e300,
            last: f64::NAN,
            weight_norm_last: 1.0 / 3.0,
            update_norm_last: 5e-324,
        }];
        let progress = FitProgress {
            epoch: 1,
            step: 3,
            loss_sum: 1.25,
            correct: 2,
            seen: 4,
            history,
            telemetry,
            train_seconds: 0.1,
        };
        (model, opt, progress)
    }

    #[test]
    fn round_trip_restores_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let (model, opt, progress) = trained();
        let ck = Checkpoint::capture(&model, &opt, &progress, "seed = 1");
        ck.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        // Bit-exact, NaN included (PartialEq would say NaN != NaN).
        assert_eq!(format!("{:?}", back.progress), format!("{:?}", ck.progress));
        assert_eq!(
            back.progress.telemetry[0].sum.to_bits(),
            (0.1f64 + 0.2).to_bits()
        );
        assert_eq!(back.optimizer, ck.optimizer);
        let mut sorted = ck.params.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back.params, sorted);
        let mut m2 = classic_cnn(Activation::Relu, 99).unwrap();
        let mut o2 = Lamb::new(LambConfig::default()).unwrap();
        back.restore(&path, &mut m2, &mut o2, "seed = 1").unwrap();
        for ((n1, _, v1), (n2, _, v2)) in model.params().iter().zip(m2.params().iter()) {
            assert_eq!(n1, n2);
            assert_eq!(v1, v2);
        }
        assert_eq!(o2.state(), opt.state());
    }

    #[test]
    fn corrupt_truncated_and_mismatched_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let (model, opt, progress) = trained();
        let bytes = Checkpoint::capture(&model, &opt, &progress, "k")
            .to_bytes()
            .unwrap();
        // Truncated.
        let e = Checkpoint::from_bytes(&bytes[..bytes.len() - 10], &path).unwrap_err();
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
        // One data byte flipped.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 5] ^= 0x40;
        let e = Checkpoint::from_bytes(&bad, &path).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        // Garbage.
        let e = Checkpoint::from_bytes(b"hello world, not a checkpoint", &path).unwrap_err();
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
        // Another model shape.
        let ck = Checkpoint::from_bytes(&bytes, &path).unwrap();
        let mut other = Sequential::new([32, 32, 3])
            .conv2d(16, 3, 1, Padding::Valid, Activation::Relu)
            .flatten()
            .dense(10, Activation::Softmax)
            .build(1)
            .unwrap();
        let mut o = Lamb::new(LambConfig::default()).unwrap();
        let e = ck.restore(&path, &mut other, &mut o, "k").unwrap_err();
        assert!(e.to_string().contains("another model"), "{e}");
        // Other settings.
        let mut m = classic_cnn(Activation::Relu, 1).unwrap();
        let e = ck.restore(&path, &mut m, &mut o, "other").unwrap_err();
        assert!(e.to_string().contains("other settings"), "{e}");
        // Another optimizer's state.
        let mut ck2 = ck.clone();
        ck2.optimizer.optimizer = "adam".into();
        let e = ck2.restore(&path, &mut m, &mut o, "k").unwrap_err();
        assert!(e.to_string().contains("optimizer `adam`"), "{e}");
    }
}
