//! Helpers shared by the fuzz targets and the seed writer.

use std::path::{Path, PathBuf};

use lamb_nn::{Activation, Model, Padding, Sequential};

/// The model weights files are loaded into: 4x4x1 inputs, a 3x3 convolution of 2 filters, a
/// 3-class dense layer (tensors `conv2d/kernel`, `conv2d/bias`, `dense/kernel`, `dense/bias`).
pub fn tiny_model(seed: u64) -> Model {
    Sequential::new([4, 4, 1])
        .conv2d(2, 3, 1, Padding::Valid, Activation::Relu)
        .flatten()
        .dense(3, Activation::Softmax)
        .build(seed)
        .expect("the tiny model is valid")
}

/// A scratch path for this process (in /dev/shm when it exists, else the temp directory).
pub fn scratch(name: &str) -> PathBuf {
    let dir = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("lamb-nn-fuzz-{}-{name}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds of `weights`: the tiny model's weights as `save_safetensors` writes them, and
    /// with Keras `:0` suffixes; each checked to load. Written to `$LAMB_FUZZ_CORPUS/weights/`
    /// when that is set.
    #[test]
    fn seeds_are_valid_inputs_of_their_targets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        tiny_model(7).save_safetensors(&path).unwrap();
        let plain = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&plain).unwrap();
        let keras = safetensors::serialize(
            st.tensors().into_iter().map(|(n, v)| (format!("{n}:0"), v)),
            &None,
        )
        .unwrap();
        let mut seeds = Vec::new();
        for (name, bytes) in [("plain", plain.clone()), ("keras-suffix", keras)] {
            std::fs::write(&path, &bytes).unwrap();
            let mut m = tiny_model(1);
            m.load_safetensors(&path).unwrap();
            assert_eq!(m.params()[0].2, tiny_model(7).params()[0].2);
            seeds.push((name, bytes));
        }
        if let Some(root) = std::env::var_os("LAMB_FUZZ_CORPUS") {
            let d = Path::new(&root).join("weights");
            std::fs::create_dir_all(&d).unwrap();
            for (name, bytes) in &seeds {
                std::fs::write(d.join(name), bytes).unwrap();
            }
        }
    }
}
