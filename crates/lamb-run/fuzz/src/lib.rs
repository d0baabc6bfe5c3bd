//! Helpers shared by the fuzz targets and the seed writer: the tiny model checkpoints are
//! restored into, and re-signing a mutated checkpoint so that mutations get past its checksum.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lamb_nn::{Activation, FitProgress, Model, Padding, Sequential};
use lamb_optim::{Optimizer, OptimizerKind, OptimizerSpec};
use lamb_run::Checkpoint;
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

/// The model every checkpoint is restored into: 4x4x1 inputs, a 3x3 convolution of 2 filters,
/// a 3-class dense layer (the same as lamb-run's checkpoint tests).
pub fn tiny_model(seed: u64) -> Model {
    Sequential::new([4, 4, 1])
        .conv2d(2, 3, 1, Padding::Valid, Activation::Relu)
        .flatten()
        .dense(3, Activation::Softmax)
        .build(seed)
        .expect("the tiny model is valid")
}

/// A batch of two inputs of [`tiny_model`].
pub fn tiny_batch() -> Vec<f32> {
    (0..2 * 16).map(|i| (i % 7) as f32 / 7.0).collect()
}

/// Builds the optimizer a checkpoint's state names, with its default preset.
pub fn optimizer_named(name: &str) -> Option<Box<dyn Optimizer>> {
    let kind: OptimizerKind = name.parse().ok()?;
    lamb_optim::build(&OptimizerSpec::new(kind)).ok()
}

/// The checksum lamb-run records (`sha256`): over every tensor's name, shape and bytes sorted by
/// name, then (format 2) over the metadata values `format`, `progress`, `optimizer`, `config`.
/// A copy of the library's private `digest`; the seed test checks that they agree.
fn digest(
    tensors: &[(String, Vec<usize>, &[u8])],
    meta: Option<&HashMap<String, String>>,
) -> String {
    let mut sorted: Vec<_> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
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
        for k in ["format", "progress", "optimizer", "config"] {
            let v = meta.get(k).map_or("", String::as_str);
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses `bytes` as safetensors and writes them again with a `sha256` that matches their
/// tensors and metadata, so that the checkpoint reader goes on to parse the metadata and
/// tensors; `None` when `bytes` is not a safetensors file.
pub fn resign(bytes: &[u8]) -> Option<Vec<u8>> {
    let st = SafeTensors::deserialize(bytes).ok()?;
    let (_, header) = SafeTensors::read_metadata(bytes).ok()?;
    let mut meta = header.metadata().clone().unwrap_or_default();
    let tensors = st.tensors();
    let parts: Vec<(String, Vec<usize>, &[u8])> = tensors
        .iter()
        .map(|(n, v)| (n.clone(), v.shape().to_vec(), v.data()))
        .collect();
    let covers_meta = meta.get("format").map(String::as_str) != Some("lamb-checkpoint-1");
    let sum = digest(&parts, covers_meta.then_some(&meta));
    meta.insert("sha256".into(), sum);
    safetensors::serialize(tensors, &Some(meta)).ok()
}

/// A real checkpoint of [`tiny_model`] after two steps of `optimizer` (default preset), inside
/// its second epoch, with a history of one epoch; config key `seed = 5`.
pub fn real_checkpoint(optimizer: &str) -> Checkpoint {
    let mut model = tiny_model(1);
    let mut opt = optimizer_named(optimizer).expect("a known optimizer");
    for _ in 0..2 {
        model
            .train_step(&tiny_batch(), &[0, 2], opt.as_mut())
            .expect("a step of the tiny model");
    }
    let record = lamb_nn::EpochRecord {
        epoch: 1,
        loss: 1.25,
        accuracy: 0.5,
        val_loss: Some(1.5),
        val_accuracy: None,
        train_seconds: 1.0,
        val_seconds: 0.5,
        trust_ratios: Vec::new(),
    };
    let progress = FitProgress {
        epoch: 1,
        step: 1,
        loss_sum: 2.5,
        correct: 1,
        seen: 2,
        history: lamb_nn::History {
            epochs: vec![record],
            // A validation pass within the epoch (`--eval-every`), so that seeds hold one.
            evals: vec![lamb_nn::EvalRecord {
                epoch: 2,
                step: 1,
                global_step: 3,
                images_seen: 6,
                val_loss: 1.5,
                val_accuracy: 0.5,
                elapsed_seconds: 1.75,
            }],
        },
        telemetry: Vec::new(),
        train_seconds: 0.25,
        val_seconds: 0.125,
    };
    Checkpoint::capture(&model, opt.as_ref(), &progress, "seed = 5\n")
}

/// A checkpoint's content in a comparable form (`Checkpoint`'s `==` fails on the NaN that a
/// progress record may hold, and `to_bytes` orders the metadata differently at each call).
pub fn same(ck: &Checkpoint) -> String {
    format!("{ck:?}")
}

/// A scratch path for this process (in /dev/shm when it exists, else the temp directory).
pub fn scratch(name: &str) -> PathBuf {
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("lamb-run-fuzz-{}-{name}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamb_run::RunMarker;

    /// The seeds of the targets (in their input format: a mode byte, then the file), each
    /// checked to be accepted; written to `$LAMB_FUZZ_CORPUS/<target>/` when that is set.
    #[test]
    fn seeds_are_valid_inputs_of_their_targets() {
        let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
        for name in ["lamb", "adam", "adamw", "lars", "sgd"] {
            let ck = real_checkpoint(name);
            let bytes = ck.to_bytes().unwrap();
            let back = Checkpoint::from_bytes(&bytes, Path::new("seed")).unwrap();
            // Reading sorts the weights by name; the rest comes back as captured.
            let mut sorted = ck.clone();
            sorted.params.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(same(&back), same(&sorted));
            // Re-signing a valid checkpoint must give one that reads the same: the copy of
            // the checksum agrees with the library's.
            let again = Checkpoint::from_bytes(&resign(&bytes).unwrap(), Path::new("seed"))
                .expect("re-signed checkpoint reads");
            assert_eq!(same(&again), same(&sorted));
            let mut model = tiny_model(3);
            let mut opt = optimizer_named(name).unwrap();
            back.restore(Path::new("seed"), &mut model, opt.as_mut(), "seed = 5\n")
                .unwrap();
            // Mode 0: raw bytes; mode 1: re-signed (the target re-signs what follows).
            for mode in [0u8, 1] {
                seeds.push((
                    "checkpoint",
                    format!("{name}-mode{mode}"),
                    [&[mode][..], &bytes].concat(),
                ));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        RunMarker::new(Path::new("/data/cifar-10-batches-bin"), "sha256:0123abcd")
            .write(dir.path())
            .unwrap();
        let marker = std::fs::read(dir.path().join(lamb_run::rundir::MARKER)).unwrap();
        assert!(RunMarker::read(dir.path()).unwrap().is_some());
        seeds.push(("marker", "marker".into(), marker));
        if let Some(root) = std::env::var_os("LAMB_FUZZ_CORPUS") {
            for (target, name, bytes) in &seeds {
                let d = Path::new(&root).join(target);
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join(name), bytes).unwrap();
            }
        }
    }
}
