//! A hidden hook for deterministic tests of stops and kills: with `LAMB_TEST_PAUSE_AT=load`
//! the process announces `LAMB_TEST_PAUSED load` on stderr while loading data, and with
//! `LAMB_TEST_PAUSE_AT=N` it announces `LAMB_TEST_PAUSED step N` after global training step N
//! (counted from 1 over the whole run); then it waits there until a stop signal arrives. A test
//! sends its signal once it has read that line, so the signal lands at a known point however
//! fast or loaded the machine is. Unset, the hook costs one comparison per step.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable of the hook.
pub const PAUSE_AT: &str = "LAMB_TEST_PAUSE_AT";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pause {
    None,
    Load,
    Step(u64),
}

fn pause() -> Pause {
    static P: OnceLock<Pause> = OnceLock::new();
    *P.get_or_init(|| match std::env::var(PAUSE_AT) {
        Ok(v) if v == "load" => Pause::Load,
        Ok(v) => v.parse().map(Pause::Step).unwrap_or(Pause::None),
        Err(_) => Pause::None,
    })
}

fn announce(what: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "LAMB_TEST_PAUSED {what}");
    let _ = e.flush();
}

/// While loading data: with the hook set to `load`, announce and wait for a signal (which
/// ends the process during loading).
pub fn at_load() {
    if pause() == Pause::Load {
        announce("load");
        loop {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// After global step `step` (from 1): with the hook set to that step, announce and wait until
/// `stop` is set by a signal.
pub fn at_step(step: u64, stop: &AtomicBool) {
    if pause() == Pause::Step(step) {
        announce(&format!("step {step}"));
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
