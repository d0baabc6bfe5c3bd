//! Checkpoints: everything needed to continue a run exactly (weights, optimizer state with its
//! moments and step counts, position in the run with the epoch's running sums, history so
//! far) in one safetensors file, written atomically. Shuffling needs no saved RNG state: each
//! epoch's order follows from the seed and the epoch number.
//!
//! Layout: tensors `model/<param>` (the weights, Keras names and shapes) and
//! `optim/<tensor>/<slot>` (optimizer slots); metadata `format`, `progress` (TOML of
//! [`FitProgress`], which keeps NaN and infinities exact), `optimizer` (JSON of the
//! [`OptimizerState`] without slot data), `config` (the settings that decide the numbers) and
//! `sha256` (over every tensor's name, shape and bytes, then the other four metadata values),
//! so a corrupt, truncated, edited or mismatched file is refused with a message instead of
//! resuming wrongly. Files of the first format (`lamb-checkpoint-1`, whose checksum covered the
//! tensors only) are still read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lamb_nn::{FitProgress, Model};
use lamb_optim::{Optimizer, OptimizerState, TensorState};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};

use crate::atomic::write_atomic;

/// Format tag stored in every checkpoint written now; its checksum covers the metadata too.
pub const FORMAT: &str = "lamb-checkpoint-2";

/// File name of the checkpoint inside a run directory's `checkpoint/` folder.
pub const FILE: &str = "checkpoint/checkpoint.safetensors";

/// Why a checkpoint could not be written, read or applied.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read or written (the cause follows in the error chain).
    #[error("cannot {action} checkpoint {path}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The checkpoint file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: anyhow::Error,
    },
    /// There is no checkpoint file.
    #[error(
        "no checkpoint at {path}: the run ended before its first checkpoint (one is written at \
         the end of every epoch and at a Ctrl-C stop), or the file was removed; there is nothing \
         to resume: start a new run with `lamb train --out DIR`"
    )]
    Missing {
        /// The checkpoint file expected.
        path: PathBuf,
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
    /// The settings that decide the numbers (the command's `RunConfig::training_key`).
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

/// The metadata keys covered by the checksum of a [`FORMAT`] file, in hashing order.
const META_KEYS: [&str; 4] = ["format", "progress", "optimizer", "config"];

/// The first format, whose checksum covered the tensors only; still read.
const FORMAT_1: &str = "lamb-checkpoint-1";

/// SHA-256 (hex) over every tensor's name, shape and bytes (sorted by name), then, when
/// `meta` is given, over the values of [`META_KEYS`] (a missing key hashes as empty).
fn digest<'a>(
    items: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>,
    meta: Option<&HashMap<String, String>>,
) -> String {
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
    if let Some(meta) = meta {
        for k in META_KEYS {
            let v = meta.get(k).map_or("", String::as_str);
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Says in words why `bytes` is not a readable safetensors file.
fn describe_unreadable(e: &safetensors::SafeTensorError, bytes: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let after = bytes.len().saturating_sub(8);
    match (e, header_len) {
        (E::HeaderTooSmall, _) => format!(
            "the file holds {} bytes; a checkpoint starts with an 8-byte header length, then the \
             header and the tensor data (empty or truncated file)",
            bytes.len()
        ),
        (E::HeaderTooLarge, Some(n)) => format!(
            "its first 8 bytes give a header length of {n} bytes; safetensors allows at most \
             100,000,000 (not a checkpoint, or its start is damaged)"
        ),
        (E::InvalidHeaderLength, Some(n)) => format!(
            "its first 8 bytes give a header length of {n} bytes, but only {after} bytes follow \
             (truncated file)"
        ),
        (E::InvalidHeader, _) => "its header is not UTF-8 text".into(),
        (E::InvalidHeaderStart | E::InvalidHeaderDeserialization | E::JsonError(_), _) => {
            "its header is not the JSON table of tensors safetensors expects".into()
        }
        (E::MetadataIncompleteBuffer, Some(n)) => format!(
            "the header's tensors do not end where the file ends ({} bytes of tensor data \
             follow the {n}-byte header; truncated, or bytes appended)",
            after.saturating_sub(n as usize)
        ),
        (E::InvalidOffset(name), _) => format!(
            "tensor `{name}` has data offsets that do not start where the previous tensor ends"
        ),
        (E::TensorInvalidInfo, _) => {
            "a tensor's data length does not equal its shape times its dtype size".into()
        }
        (E::ValidationOverflow, _) => "a tensor's shape is too large to address (overflow)".into(),
        (other, _) => format!("not a readable safetensors file ({other:?})"),
    }
}

/// Checks that a progress record is one `fit` can have written: one history record per
/// completed epoch, numbered from 1.
fn check_progress(p: &FitProgress) -> Result<(), String> {
    if p.history.epochs.len() != p.epoch {
        return Err(format!(
            "metadata `progress` says {} epochs are complete but its history holds {} records \
             (they must agree)",
            p.epoch,
            p.history.epochs.len()
        ));
    }
    if let Some((i, r)) = (p.history.epochs.iter().enumerate()).find(|(i, r)| r.epoch != i + 1) {
        return Err(format!(
            "metadata `progress`: history record {} is numbered epoch {}; records are numbered \
             1, 2, ... in order",
            i + 1,
            r.epoch
        ));
    }
    Ok(())
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
                .tensors()
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
        let sum = digest(
            tensors
                .iter()
                .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
            Some(&meta),
        );
        meta.insert("sha256".to_string(), sum);
        let views = tensors
            .iter()
            .map(|(n, s, d)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), d)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        Ok(safetensors::serialize(views, &Some(meta))?)
    }

    /// Writes the checkpoint atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |e: anyhow::Error| CheckpointError::Io {
            action: "write",
            path: path.into(),
            source: e,
        };
        let bytes = self.to_bytes().map_err(io)?;
        write_atomic(path, &bytes).map_err(io)
    }

    /// Reads and verifies a checkpoint (format, checksum, structure).
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bytes = lamb_nn::files::read_safetensors(path).map_err(|e| match e {
            lamb_nn::NnError::Io { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound => {
                CheckpointError::Missing { path: path.into() }
            }
            lamb_nn::NnError::Weights { message, .. } => CheckpointError::Corrupt {
                path: path.into(),
                message,
            },
            lamb_nn::NnError::Io { cause, .. } => CheckpointError::Io {
                action: "read",
                path: path.into(),
                source: cause.into(),
            },
            other => CheckpointError::Io {
                action: "read",
                path: path.into(),
                source: other.into(),
            },
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses and verifies checkpoint bytes; `path` names the source in errors. Any input gives
    /// either an error or a checkpoint whose checksum, structure and progress are consistent.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |m: String| CheckpointError::Corrupt {
            path: path.into(),
            message: m,
        };
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| corrupt(describe_unreadable(&e, bytes)))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| corrupt(describe_unreadable(&e, bytes)))?;
        let meta = header.metadata().clone().ok_or_else(|| {
            corrupt(format!(
                "its header has no __metadata__ table: a safetensors file, but not a lamb \
                 checkpoint (those carry the keys {META_KEYS:?} and `sha256`)"
            ))
        })?;
        let get = |k: &str| {
            meta.get(k).ok_or_else(|| {
                corrupt(format!(
                    "metadata key `{k}` missing (a checkpoint carries {META_KEYS:?} and `sha256`)"
                ))
            })
        };
        let format = get("format")?;
        let covers_meta = match format.as_str() {
            FORMAT => true,
            FORMAT_1 => false,
            other => {
                return Err(corrupt(format!(
                    "format `{other}`, this lamb reads `{FORMAT}` and `{FORMAT_1}`"
                )))
            }
        };
        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(corrupt(format!(
                    "tensor `{name}` has dtype {:?}; every checkpoint tensor is F32",
                    view.dtype()
                )));
            }
            tensors.push((name, view.shape().to_vec(), view.data().to_vec()));
        }
        let sum = digest(
            tensors
                .iter()
                .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
            covers_meta.then_some(&meta),
        );
        let recorded = get("sha256")?;
        if &sum != recorded {
            return Err(corrupt(format!(
                "checksum mismatch: the file records sha256 {recorded}, its {} hash to {sum}; \
                 the file was altered after it was written",
                if covers_meta {
                    "tensors and metadata"
                } else {
                    "tensors"
                }
            )));
        }
        let progress: FitProgress = toml::from_str(get("progress")?).map_err(|e| {
            corrupt(format!(
                "metadata `progress` is not a valid progress record: {e}"
            ))
        })?;
        check_progress(&progress).map_err(corrupt)?;
        let mut optimizer: OptimizerState =
            serde_json::from_str(get("optimizer")?).map_err(|e| {
                corrupt(format!(
                    "metadata `optimizer` is not a valid optimizer record: {e}"
                ))
            })?;
        let mut by_name: HashMap<String, (Vec<usize>, Vec<u8>)> =
            tensors.into_iter().map(|(n, s, d)| (n, (s, d))).collect();
        for TensorState {
            name, len, slots, ..
        } in &mut optimizer.tensors
        {
            for (slot, data) in slots.iter_mut() {
                let key = format!("optim/{name}/{slot}");
                let (_, d) = by_name.remove(&key).ok_or_else(|| {
                    corrupt(format!(
                        "optimizer slot `{key}` is listed in metadata `optimizer` but no tensor \
                         of that name exists (missing, or listed twice)"
                    ))
                })?;
                *data = bytes_f32(&d);
                if data.len() != *len {
                    return Err(corrupt(format!(
                        "optimizer slot `{key}` has {} values; its tensor has {len}",
                        data.len()
                    )));
                }
            }
        }
        let mut params: Vec<(String, Vec<usize>, Vec<f32>)> = by_name
            .into_iter()
            .map(|(n, (s, d))| match n.strip_prefix("model/") {
                Some(p) => Ok((p.to_string(), s, bytes_f32(&d))),
                None => Err(corrupt(format!(
                    "unexpected tensor `{n}`: a checkpoint holds `model/<param>` weights and the \
                     `optim/<tensor>/<slot>` slots its metadata `optimizer` lists"
                ))),
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
        let ours = model.tensors();
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
                .set_tensor(n, v)
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

    /// A history of `acc.len()` epochs with these validation accuracies and losses, each epoch
    /// with the trust ratios of two tensors.
    pub(super) fn history(acc: &[f64], loss: &[f64]) -> lamb_nn::History {
        let stats = |name: &str, mean: f64| lamb_nn::TensorStats {
            name: name.into(),
            mean,
            min: 0.1,
            max: 1.0,
            last: 0.5,
            weight_norm_last: 1.0,
            update_norm_last: 2.0,
        };
        lamb_nn::History {
            epochs: acc
                .iter()
                .zip(loss)
                .enumerate()
                .map(|(i, (&a, &l))| lamb_nn::EpochRecord {
                    epoch: i + 1,
                    loss: l * 0.8,
                    accuracy: a + 0.05,
                    val_loss: Some(l),
                    val_accuracy: Some(a),
                    train_seconds: 1.0 + i as f64,
                    val_seconds: 0.5,
                    trust_ratios: vec![stats("conv2d/kernel", 0.5), stats("conv2d/bias", 0.02)],
                })
                .collect(),
            evals: vec![],
        }
    }

    fn trained() -> (Model, Lamb, FitProgress) {
        let mut model = classic_cnn(Activation::Relu, 3).unwrap();
        let mut opt = Lamb::new(LambConfig::default()).unwrap();
        let x: Vec<f32> = (0..4 * 32 * 32 * 3)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        model.train_step(&x, &[1, 2, 3, 4], &mut opt).unwrap();
        let mut history = history(&[0.5, 0.25], &[1.5, f64::NAN]);
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
            epoch: 2,
            step: 3,
            loss_sum: 1.25,
            correct: 2,
            seen: 4,
            history,
            telemetry,
            train_seconds: 0.1,
            val_seconds: 0.05,
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
    fn missing_and_unreadable_files_say_so_once() {
        let dir = tempfile::tempdir().unwrap();
        let e = Checkpoint::load(&dir.path().join(FILE)).unwrap_err();
        assert!(matches!(e, CheckpointError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("nothing to resume"), "{e}");
        // A directory in its place: the cause is in the chain, named once.
        let e = anyhow::Error::new(Checkpoint::load(dir.path()).unwrap_err());
        let text = format!("{e:#}");
        assert!(text.starts_with("cannot read checkpoint"), "{text}");
        assert_eq!(text.matches("is a directory").count(), 1, "{text}");
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

/// Property and mutation tests of the reader: arbitrary bytes, arbitrary headers and edits of a
/// real checkpoint give an error naming the file, or consistent data that restores (or is
/// refused) without a panic. Case counts keep the whole set to a few seconds.
#[cfg(test)]
mod props {
    use std::sync::OnceLock;

    use super::*;
    use lamb_nn::{Activation, Padding, Sequential};
    use lamb_optim::{Lamb, LambConfig};
    use proptest::prelude::*;
    use proptest::sample::Index;

    const KEY: &str = "seed = 5\nbatch_size = 2\n";
    const NAME: &str = "probe.safetensors";

    /// A tensor as stored: name, dtype, shape, bytes.
    type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

    /// An edit of a checkpoint taken apart.
    type Mutate<'a> = dyn Fn(&mut Vec<Raw>, &mut HashMap<String, String>) + 'a;

    fn tiny_model(seed: u64) -> Model {
        Sequential::new([4, 4, 1])
            .conv2d(2, 3, 1, Padding::Valid, Activation::Relu)
            .flatten()
            .dense(3, Activation::Softmax)
            .build(seed)
            .unwrap()
    }

    fn batch() -> Vec<f32> {
        (0..2 * 16).map(|i| (i % 7) as f32 / 7.0).collect()
    }

    /// A real checkpoint of a tiny model after two LAMB steps, inside epoch 2: its bytes and
    /// what reading them gives.
    fn valid() -> &'static (Vec<u8>, Checkpoint) {
        static V: OnceLock<(Vec<u8>, Checkpoint)> = OnceLock::new();
        V.get_or_init(|| {
            let mut model = tiny_model(1);
            let mut opt = Lamb::new(LambConfig::default()).unwrap();
            for _ in 0..2 {
                model.train_step(&batch(), &[0, 2], &mut opt).unwrap();
            }
            let progress = FitProgress {
                epoch: 1,
                step: 1,
                loss_sum: 2.5,
                correct: 1,
                seen: 2,
                history: super::tests::history(&[0.5], &[1.5]),
                telemetry: vec![],
                train_seconds: 0.01,
                val_seconds: 0.0,
            };
            let bytes = Checkpoint::capture(&model, &opt, &progress, KEY)
                .to_bytes()
                .unwrap();
            let back = Checkpoint::from_bytes(&bytes, Path::new(NAME)).unwrap();
            (bytes, back)
        })
    }

    /// The valid checkpoint taken apart: tensors and metadata.
    fn parts() -> (Vec<Raw>, HashMap<String, String>) {
        let bytes = &valid().0;
        let st = SafeTensors::deserialize(bytes).unwrap();
        let mut tensors: Vec<Raw> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
        (tensors, header.metadata().clone().unwrap())
    }

    /// Serialises tensors and metadata; `sign` recomputes `sha256` (over the metadata too
    /// when the format is 2).
    fn forge(tensors: &[Raw], meta: &HashMap<String, String>, sign: bool) -> Vec<u8> {
        let mut meta = meta.clone();
        if sign {
            let covers = meta.get("format").map(String::as_str) != Some(FORMAT_1);
            let sum = digest(
                tensors
                    .iter()
                    .map(|(n, _, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
                covers.then_some(&meta),
            );
            meta.insert("sha256".into(), sum);
        }
        // One tensor per name (a file cannot hold two; safetensors' writer panics on them).
        let mut seen = std::collections::HashSet::new();
        let views: Vec<_> = tensors
            .iter()
            .filter(|(n, ..)| seen.insert(n.clone()))
            .map(|(n, t, s, d)| (n.clone(), TensorView::new(*t, s.clone(), d).unwrap()))
            .collect();
        safetensors::serialize(views, &Some(meta)).unwrap()
    }

    fn read(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::from_bytes(bytes, Path::new(NAME))
    }

    /// An error must name the file; data must be consistent, and restoring it into a fresh
    /// tiny model, then training one step, must return without a panic.
    fn check(r: &Result<Checkpoint, CheckpointError>) -> Result<(), TestCaseError> {
        match r {
            Err(e) => prop_assert!(e.to_string().contains(NAME), "{}", e),
            Ok(ck) => {
                prop_assert_eq!(ck.progress.history.epochs.len(), ck.progress.epoch);
                for t in &ck.optimizer.tensors {
                    for (_, d) in &t.slots {
                        prop_assert_eq!(d.len(), t.len);
                    }
                }
                for (_, s, v) in &ck.params {
                    prop_assert_eq!(s.iter().product::<usize>(), v.len());
                }
                let mut m = tiny_model(9);
                let mut o = Lamb::new(LambConfig::default()).unwrap();
                if ck.restore(Path::new(NAME), &mut m, &mut o, KEY).is_ok() {
                    let _ = m.train_step(&batch(), &[1, 0], &mut o);
                }
            }
        }
        Ok(())
    }

    fn msg(bytes: &[u8]) -> String {
        match read(bytes) {
            Ok(_) => panic!("accepted a hostile checkpoint"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn valid_checkpoint_reads_back_and_restores() {
        let (_, ck) = valid();
        let mut m = tiny_model(3);
        let mut o = Lamb::new(LambConfig::default()).unwrap();
        ck.restore(Path::new(NAME), &mut m, &mut o, KEY).unwrap();
        // (Bytes may differ: the metadata table's key order is not fixed.)
        let again = Checkpoint::capture(&m, &o, &ck.progress, KEY)
            .to_bytes()
            .unwrap();
        assert!(read(&again).unwrap() == *ck);
        // The forger reproduces the writer, so forged files differ only where edited.
        let (t, meta) = parts();
        assert_eq!(&read(&forge(&t, &meta, true)).unwrap(), ck);
    }

    #[test]
    fn truncation_at_every_offset_and_appended_bytes_are_refused() {
        let bytes = &valid().0;
        for cut in 0..bytes.len() {
            let e = msg(&bytes[..cut]);
            assert!(e.contains("corrupt or truncated"), "cut at {cut}: {e}");
        }
        assert!(msg(&bytes[..3]).contains("holds 3 bytes"));
        assert!(msg(&bytes[..100]).contains("(truncated file)"));
        assert!(msg(&bytes[..bytes.len() - 1]).contains("do not end where the file ends"));
        for extra in [1usize, 4, 4096] {
            let mut b = bytes.clone();
            b.resize(b.len() + extra, 0);
            assert!(msg(&b).contains("truncated, or bytes appended"));
        }
    }

    #[test]
    fn each_structural_defect_has_its_own_message() {
        let (t, meta) = parts();
        let with = |f: &Mutate<'_>, sign: bool| {
            let (mut t, mut m) = (t.clone(), meta.clone());
            f(&mut t, &mut m);
            forge(&t, &m, sign)
        };
        let slot = t.iter().position(|x| x.0.starts_with("optim/")).unwrap();
        let weight = t.iter().position(|x| x.0.starts_with("model/")).unwrap();
        // Metadata edited after writing (not re-signed): the checksum covers it.
        let e = msg(&with(
            &|_, m| {
                let p = m["progress"].replace("step = 1", "step = 0");
                m.insert("progress".into(), p);
            },
            false,
        ));
        assert!(
            e.contains("checksum mismatch") && e.contains("metadata"),
            "{e}"
        );
        let e = msg(&with(&|t, _| t[weight].3[0] ^= 1, false));
        assert!(e.contains("checksum mismatch"), "{e}");
        // Re-signed defects reach the structural checks.
        let e = msg(&with(&|t, _| drop(t.remove(slot)), true));
        assert!(
            e.contains(&format!("optimizer slot `{}`", t[slot].0)),
            "{e}"
        );
        let e = msg(&with(
            &|t, _| t.push(("junk".into(), Dtype::F32, vec![1], vec![0; 4])),
            true,
        ));
        assert!(e.contains("unexpected tensor `junk`"), "{e}");
        let e = msg(&with(&|t, _| t[slot].1 = Dtype::I32, true));
        assert!(e.contains("dtype I32") && e.contains("F32"), "{e}");
        let e = msg(&with(
            &|t, _| {
                t[slot].2 = vec![t[slot].2[0] + 1];
                t[slot].3.extend([0; 4]);
            },
            true,
        ));
        assert!(e.contains("values; its tensor has"), "{e}");
        let e = msg(&with(&|_, m| drop(m.remove("config")), true));
        assert!(e.contains("`config` missing"), "{e}");
        let e = msg(&with(&|_, m| drop(m.remove("sha256")), false));
        assert!(e.contains("`sha256` missing"), "{e}");
        let e = msg(&with(
            &|_, m| drop(m.insert("format".into(), "x".into())),
            true,
        ));
        assert!(e.contains("format `x`") && e.contains(FORMAT), "{e}");
        let e = msg(&with(
            &|_, m| drop(m.insert("optimizer".into(), "{".into())),
            true,
        ));
        assert!(e.contains("metadata `optimizer` is not a valid"), "{e}");
        let e = msg(&with(
            &|_, m| {
                let p = m["progress"].replace("epoch = 1\n", "epoch = 3\n");
                m.insert("progress".into(), p);
            },
            true,
        ));
        assert!(
            e.contains("3 epochs are complete but its history holds 1"),
            "{e}"
        );
        let e = msg(&forge(&t, &HashMap::new(), false));
        assert!(e.contains("`format` missing"), "{e}");
        let views: Vec<_> = t
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let e = msg(&safetensors::serialize(views, &None).unwrap());
        assert!(e.contains("no __metadata__"), "{e}");
        // Readable, but for another model: refused at restore.
        for edit in [
            &(|t: &mut Vec<Raw>, _: &mut HashMap<String, String>| drop(t.remove(weight)))
                as &Mutate<'_>,
            &|t, _| t[weight].2 = vec![t[weight].3.len() / 4, 1],
        ] {
            let ck = read(&with(edit, true)).unwrap();
            let mut m = tiny_model(3);
            let mut o = Lamb::new(LambConfig::default()).unwrap();
            let e = ck
                .restore(Path::new(NAME), &mut m, &mut o, KEY)
                .unwrap_err();
            assert!(e.to_string().contains("another model"), "{e}");
        }
        // The first format (checksum over tensors only) is still read.
        let v1 = with(
            &|_, m| drop(m.insert("format".into(), FORMAT_1.into())),
            true,
        );
        assert_eq!(read(&v1).unwrap(), valid().1);
    }

    /// Edits of a real checkpoint, applied before it is (optionally) re-signed.
    #[derive(Debug, Clone)]
    enum Edit {
        Drop(Index),
        Add(usize, usize),
        Rename(Index, usize),
        Retype(Index, usize),
        Resize(Index, usize),
        Reshape(Index, bool),
        MetaDrop(usize),
        MetaSet(usize, usize),
        MetaCut(usize, Index),
        Progress(usize, usize),
        Optimizer(usize, Index, usize),
        Unsign,
    }

    const NAMES: [&str; 8] = [
        "model/conv2d/kernel",
        "model/dense/bias",
        "model/extra",
        "optim/conv2d/kernel/m",
        "optim/nope/v",
        "junk",
        "",
        "model/",
    ];
    const KEYS: [&str; 6] = [
        "format",
        "progress",
        "optimizer",
        "config",
        "sha256",
        "other",
    ];
    const VALUES: [&str; 9] = [
        "",
        "garbage",
        FORMAT_1,
        FORMAT,
        "epoch = 1",
        "{}",
        r#"{"optimizer":"lamb","step":1,"skipped_steps":0,"tensors":[]}"#,
        KEY,
        "[[[",
    ];
    const DTYPES: [Dtype; 6] = [
        Dtype::I32,
        Dtype::U32,
        Dtype::F16,
        Dtype::F64,
        Dtype::U8,
        Dtype::BOOL,
    ];

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            any::<Index>().prop_map(Edit::Drop),
            (0..NAMES.len(), 0usize..20).prop_map(|(a, b)| Edit::Add(a, b)),
            (any::<Index>(), 0..NAMES.len()).prop_map(|(a, b)| Edit::Rename(a, b)),
            (any::<Index>(), 0..DTYPES.len()).prop_map(|(a, b)| Edit::Retype(a, b)),
            (any::<Index>(), 0usize..40).prop_map(|(a, b)| Edit::Resize(a, b)),
            (any::<Index>(), any::<bool>()).prop_map(|(a, b)| Edit::Reshape(a, b)),
            (0..KEYS.len()).prop_map(Edit::MetaDrop),
            (0..KEYS.len(), 0..VALUES.len()).prop_map(|(a, b)| Edit::MetaSet(a, b)),
            (0..KEYS.len(), any::<Index>()).prop_map(|(a, b)| Edit::MetaCut(a, b)),
            (0usize..6, 0usize..5).prop_map(|(a, b)| Edit::Progress(a, b)),
            (0usize..6, any::<Index>(), 0usize..60).prop_map(|(a, b, c)| Edit::Optimizer(a, b, c)),
            Just(Edit::Unsign),
        ]
    }

    fn apply(e: &Edit, t: &mut Vec<Raw>, m: &mut HashMap<String, String>) {
        let n = t.len();
        match e {
            Edit::Drop(i) if n > 0 => drop(t.remove(i.index(n))),
            Edit::Add(name, len) => t.push((
                NAMES[*name].into(),
                Dtype::F32,
                vec![*len],
                vec![7; 4 * len],
            )),
            Edit::Rename(i, name) if n > 0 => t[i.index(n)].0 = NAMES[*name].into(),
            Edit::Retype(i, d) if n > 0 => {
                let x = &mut t[i.index(n)];
                let d = DTYPES[*d];
                if x.3.len().is_multiple_of(d.size()) {
                    x.1 = d;
                    x.2 = vec![x.3.len() / d.size()];
                }
            }
            Edit::Resize(i, len) if n > 0 => {
                let x = &mut t[i.index(n)];
                x.3.resize(4 * len, 0x3f);
                (x.1, x.2) = (Dtype::F32, vec![*len]);
            }
            Edit::Reshape(i, flip) if n > 0 => {
                let x = &mut t[i.index(n)];
                if *flip {
                    x.2.reverse();
                } else {
                    x.2.insert(0, 1);
                }
            }
            Edit::MetaDrop(k) => drop(m.remove(KEYS[*k])),
            Edit::MetaSet(k, v) => drop(m.insert(KEYS[*k].into(), VALUES[*v].into())),
            Edit::MetaCut(k, at) => {
                if let Some(v) = m.get_mut(KEYS[*k]) {
                    let mut cut = at.index(v.len() + 1);
                    while !v.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    v.truncate(cut);
                }
            }
            Edit::Progress(kind, v) => {
                let Some(Ok(mut p)) = m.get("progress").map(|s| toml::from_str::<FitProgress>(s))
                else {
                    return;
                };
                match kind {
                    0 => p.epoch = *v,
                    1 => p.step = *v * 1000,
                    2 => p.seen = 0,
                    3 => p.history.epochs.truncate(*v),
                    4 => p.loss_sum = f64::NAN,
                    _ => p.history.epochs.iter_mut().for_each(|r| r.epoch += v),
                }
                m.insert("progress".into(), toml::to_string(&p).unwrap());
            }
            Edit::Optimizer(kind, i, v) => {
                let Some(Ok(mut o)) = m
                    .get("optimizer")
                    .map(|s| serde_json::from_str::<OptimizerState>(s))
                else {
                    return;
                };
                let k = o.tensors.len();
                match kind {
                    0 if k > 0 => o.tensors[i.index(k)].len = *v,
                    1 if k > 0 => drop(o.tensors.remove(i.index(k))),
                    2 if k > 0 => o.tensors.push(o.tensors[i.index(k)].clone()),
                    3 if k > 0 => {
                        if let Some(s) = o.tensors[i.index(k)].slots.first_mut() {
                            s.0 = "x".into();
                        }
                    }
                    4 => o.optimizer = "adam".into(),
                    _ => o.step = u64::MAX - *v as u64,
                }
                m.insert("optimizer".into(), serde_json::to_string(&o).unwrap());
            }
            _ => {}
        }
    }

    /// Cases per property: 1000 (about half a second in all), or `PROPTEST_CASES`.
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000)
    }

    /// A random JSON value for header fields: numbers (huge ones too), strings, lists.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::json;
        prop_oneof![
            any::<u64>().prop_map(|x| json!(x)),
            (0u64..64).prop_map(|x| json!(x)),
            any::<i32>().prop_map(|x| json!(x)),
            Just(json!(usize::MAX)),
            Just(json!("F32")),
            Just(json!("I64")),
            Just(json!("F99")),
            Just(json!(null)),
            proptest::collection::vec(0u64..8, 0..4).prop_map(|v| json!(v)),
            proptest::collection::vec(any::<u64>(), 0..3).prop_map(|v| json!(v)),
            "[a-z{}\\[\\]\"]{0,8}".prop_map(|s| json!(s)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let r = read(&bytes);
            prop_assert!(r.is_err());
            check(&r)?;
        }

        #[test]
        fn arbitrary_header_after_a_true_length_never_panics(
            header in "[ -~]{0,200}",
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend(header.as_bytes());
            b.extend(data);
            check(&read(&b))?;
        }

        #[test]
        fn byte_flips_are_refused_or_change_nothing(
            flips in proptest::collection::vec((any::<Index>(), 1u8..=255), 1..6),
        ) {
            let (bytes, ck) = valid();
            let mut b = bytes.clone();
            for (i, x) in &flips {
                let k = i.index(b.len());
                b[k] ^= x;
            }
            let r = read(&b);
            if let Ok(got) = &r {
                // Only a flip inside the header's padding whitespace may leave it readable.
                prop_assert_eq!(got, ck);
            }
            check(&r)?;
        }

        #[test]
        fn header_json_edits_never_panic(
            edits in proptest::collection::vec(
                (any::<Index>(), 0usize..4, json_value()), 1..4),
            keep_data in any::<Index>(),
        ) {
            let bytes = &valid().0;
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let mut header: serde_json::Value =
                serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            let names: Vec<String> = header.as_object().unwrap().keys().cloned().collect();
            for (i, field, v) in &edits {
                let name = &names[i.index(names.len())];
                let entry = header.get_mut(name).unwrap();
                match (name.as_str(), entry.as_object_mut()) {
                    ("__metadata__", Some(o)) => {
                        let k = KEYS[*field % KEYS.len()];
                        o.insert(k.into(), v.clone());
                    }
                    (_, Some(o)) => {
                        let f = ["dtype", "shape", "data_offsets", "extra"][*field];
                        o.insert(f.into(), v.clone());
                    }
                    _ => {}
                }
            }
            let h = serde_json::to_vec(&header).unwrap();
            let data = &bytes[8 + n..];
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend(&h);
            b.extend(&data[..keep_data.index(data.len() + 1)]);
            check(&read(&b))?;
        }

        #[test]
        fn forged_edits_give_an_error_or_consistent_data(
            edits in proptest::collection::vec(edit(), 1..5),
        ) {
            let (mut t, mut m) = parts();
            for e in &edits {
                apply(e, &mut t, &mut m);
            }
            let sign = !edits.iter().any(|e| matches!(e, Edit::Unsign));
            check(&read(&forge(&t, &m, sign)))?;
        }
    }
}
