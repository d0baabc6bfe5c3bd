//! The weights reader (`Model::load_safetensors`, which reads through
//! `lamb_nn::files::read_safetensors`) on arbitrary file contents: an error with the model
//! unchanged, or weights of the model's shapes, all finite.
#![no_main]

use lamb_nn_fuzz::{scratch, tiny_model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch("weights.safetensors");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let mut model = tiny_model(0);
    let before: Vec<Vec<f32>> = model.params().iter().map(|p| p.2.to_vec()).collect();
    match model.load_safetensors(&path) {
        Ok(()) => {
            for (name, _, v) in model.params() {
                assert!(
                    v.iter().all(|x| x.is_finite()),
                    "{name} holds non-finite values"
                );
            }
        }
        Err(_) => {
            let after: Vec<Vec<f32>> = model.params().iter().map(|p| p.2.to_vec()).collect();
            assert_eq!(before, after, "a failed load changed the model");
        }
    }
    let _ = std::fs::remove_file(&path);
});
