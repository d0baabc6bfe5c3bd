//! Optimizer specs (JSON, TOML) and optimizer states (JSON) from arbitrary bytes: the first
//! byte picks which (see `Mode`); each is read, built or loaded, and stepped once. Any input
//! gives an error or a working optimizer, never a panic.
#![no_main]

use lamb_optim_fuzz::{exercise, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&mode, rest)) = data.split_first() {
        exercise(Mode::of(mode), rest);
    }
});
