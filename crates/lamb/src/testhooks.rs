//! A hidden hook for deterministic tests of stops and kills: with `LAMB_TEST_PAUSE_AT=load`
//! the process announces `LAMB_TEST_PAUSED load` while loading data, and with
//! `LAMB_TEST_PAUSE_AT=N` it announces `LAMB_TEST_PAUSED step N` after global training step N
//! (counted from 1 over the whole run); then it blocks there until a stop signal arrives. The
//! announcement goes to stderr and, when `LAMB_TEST_PAUSE_NOTIFY` names a file (a FIFO a test
//! reads), to that file too. A test sends its signal once it has read the line, so the signal
//! lands at a known point however fast or loaded the machine is. Unset, the hook costs one
//! comparison per step.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The environment variable of the hook.
pub const PAUSE_AT: &str = "LAMB_TEST_PAUSE_AT";

/// Where the announcement also goes (a FIFO a test reads without polling).
pub const PAUSE_NOTIFY: &str = "LAMB_TEST_PAUSE_NOTIFY";

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

/// Announces the pause and returns a stream that becomes readable when a stop signal comes
/// (registered before the announcement, so no signal sent after it is missed).
fn announce(what: &str) -> UnixStream {
    let (rx, tx) = UnixStream::pair().expect("a socket pair for the test pause");
    for sig in crate::STOP_SIGNALS
        .into_iter()
        .chain([signal_hook::consts::SIGUSR1])
    {
        let tx = tx.try_clone().expect("a socket for the test pause");
        signal_hook::low_level::pipe::register(sig, tx).expect("the test pause's signal pipe");
    }
    let line = format!("LAMB_TEST_PAUSED {what}\n");
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(line.as_bytes());
    let _ = e.flush();
    if let Some(path) = std::env::var_os(PAUSE_NOTIFY) {
        // Non-blocking: a FIFO nobody reads any more is skipped, not waited on.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
    rx
}

/// While loading data: with the hook set to `load`, announce and block (a stop signal then
/// ends the process, as it does during loading).
pub fn at_load() {
    if pause() == Pause::Load {
        let mut rx = announce("load");
        let mut b = [0u8; 1];
        loop {
            let _ = rx.read(&mut b);
        }
    }
}

/// After global step `step` (from 1): with the hook set to that step, announce and block until
/// a signal has set `stop`.
pub fn at_step(step: u64, stop: &AtomicBool) {
    if pause() == Pause::Step(step) {
        let mut rx = announce(&format!("step {step}"));
        let mut b = [0u8; 1];
        // The stop flag's handler runs before the pipe's (registered earlier).
        while !stop.load(Ordering::SeqCst) {
            let _ = rx.read(&mut b);
        }
        // Keep the read end open for the process's life: a later signal (a dying sweep sends
        // one per exiting thread) writes to the pipe, and a closed peer would raise SIGPIPE.
        std::mem::forget(rx);
    }
}
