//! The checkpoint reader on arbitrary bytes. The first byte picks the mode: bit 0 re-signs the
//! rest (parsed as safetensors, written again with a matching `sha256`) so that mutations of
//! the metadata and tensors get past the checksum; bit 1 reads through a file
//! (`Checkpoint::load`: framing checks, then parsing) instead of `Checkpoint::from_bytes`.
//! Any input gives an error, or a checkpoint that writes back to bytes that read back to the same content and
//! that restores into the tiny model (or is refused with an error) and trains a step.
#![no_main]

use std::path::Path;

use lamb_run::Checkpoint;
use lamb_run_fuzz::{optimizer_named, resign, same, scratch, tiny_batch, tiny_model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 1 {
        match resign(rest) {
            Some(b) => b,
            None => return,
        }
    } else {
        rest.to_vec()
    };
    let read = if mode & 2 == 2 {
        let path = scratch("checkpoint.safetensors");
        if std::fs::write(&path, &bytes).is_err() {
            return;
        }
        let r = Checkpoint::load(&path);
        let _ = std::fs::remove_file(&path);
        r
    } else {
        Checkpoint::from_bytes(&bytes, Path::new("fuzz.safetensors"))
    };
    let Ok(ck) = read else {
        return;
    };
    let written = ck.to_bytes().expect("a checkpoint that reads writes back");
    let back = Checkpoint::from_bytes(&written, Path::new("back")).expect("written back reads");
    assert_eq!(
        same(&back),
        same(&ck),
        "a checkpoint changed in a write and read"
    );
    let mut model = tiny_model(0);
    if let Some(mut opt) = optimizer_named(&ck.optimizer.optimizer) {
        let path = Path::new("fuzz.safetensors");
        if ck
            .restore(path, &mut model, opt.as_mut(), &ck.config_key)
            .is_ok()
        {
            let _ = model.train_step(&tiny_batch(), &[0, 1], opt.as_mut());
        }
    }
});
