//! The PyTorch peer of the step benchmark: a Python process running `tools/torch_peer.py`
//! (embedded here) that steps torch's fused Adam and AdamW on request, so that blocks of its
//! steps alternate with blocks of ours in the same run.

use super::TensorShape;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The driver script, run with `PYTHON -c`.
pub const TORCH_PEER_PY: &str = include_str!("../../tools/torch_peer.py");

/// Why the torch peer could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The interpreter could not be started.
    #[error(
        "cannot run the Python interpreter {python}: {io} (give the path of a Python \
         with torch installed, e.g. a virtual environment's bin/python)"
    )]
    Spawn {
        /// The interpreter path given.
        python: PathBuf,
        /// What the operating system said (in the message, so not a `source`).
        io: std::io::Error,
    },
    /// The interpreter lacks a module the peer needs.
    #[error(
        "{python} cannot import the Python module '{module}': install it in that environment \
         (`{python} -m pip install torch`) or give an interpreter that has it ({message})"
    )]
    MissingModule {
        /// The interpreter path given.
        python: PathBuf,
        /// The missing module.
        module: String,
        /// Python's message.
        message: String,
    },
    /// The process ended or answered something else than the protocol.
    #[error("torch peer ({python}): {message}{}", stderr_note(.stderr))]
    Failed {
        /// The interpreter path given.
        python: PathBuf,
        /// What went wrong.
        message: String,
        /// The end of the process's standard error.
        stderr: String,
    },
}

fn stderr_note(s: &str) -> String {
    if s.trim().is_empty() {
        String::new()
    } else {
        format!("; its standard error ends with:\n{}", s.trim_end())
    }
}

/// Which torch optimizer a block of steps times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchOptimizer {
    /// `torch.optim.Adam(lr=1e-3, fused=True)`.
    FusedAdam,
    /// `torch.optim.AdamW(lr=1e-3, fused=True)` (weight decay 0.01).
    FusedAdamw,
}

impl TorchOptimizer {
    fn key(self) -> &'static str {
        match self {
            TorchOptimizer::FusedAdam => "adam",
            TorchOptimizer::FusedAdamw => "adamw",
        }
    }
}

/// A running torch peer. Dropping it asks the process to quit and waits for it.
pub struct TorchPeer {
    python: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    last_missing: Option<String>,
    /// `torch.__version__`.
    pub version: String,
    /// Threads torch uses (`torch.get_num_threads()`).
    pub threads: usize,
}

/// Keeps the last 8 KiB of what the process writes to standard error.
fn drain(
    mut r: impl Read + Send + 'static,
    keep: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut k = keep.lock().unwrap_or_else(|e| e.into_inner());
            k.push_str(&String::from_utf8_lossy(&buf[..n]));
            if k.len() > 8192 {
                let cut = k.len() - 8192;
                let cut = (cut..k.len()).find(|&i| k.is_char_boundary(i)).unwrap_or(0);
                k.drain(..cut);
            }
        }
    })
}

impl TorchPeer {
    /// Starts `python` on the driver with torch using `threads` threads and waits until it has
    /// imported torch. `shared_tools`: a directory holding `bert_shapes.py`, against which the
    /// BERT-base shapes are then checked.
    pub fn start(
        python: &Path,
        threads: usize,
        shared_tools: Option<&Path>,
    ) -> Result<Self, PeerError> {
        let mut cmd = Command::new(python);
        cmd.arg("-c").arg(TORCH_PEER_PY).arg(threads.to_string());
        if let Some(d) = shared_tools {
            cmd.arg(d);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|io| PeerError::Spawn {
                python: python.to_path_buf(),
                io,
            })?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = child.stderr.take().map(|e| drain(e, stderr.clone()));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stdin = child.stdin.take();
        let mut peer = TorchPeer {
            python: python.to_path_buf(),
            child,
            stdin,
            stdout,
            stderr,
            stderr_reader,
            last_missing: None,
            version: String::new(),
            threads: 0,
        };
        let ready = match peer.read_reply() {
            Ok(r) => r,
            Err(PeerError::Failed {
                python, message, ..
            }) if peer.last_missing.is_some() => {
                return Err(PeerError::MissingModule {
                    python,
                    module: peer.last_missing.take().unwrap_or_default(),
                    message,
                })
            }
            Err(e) => return Err(e),
        };
        peer.version = ready["torch"].as_str().unwrap_or("?").to_string();
        peer.threads = ready["threads"].as_u64().unwrap_or(0) as usize;
        Ok(peer)
    }

    fn fail(&mut self, message: String) -> PeerError {
        // When the process has ended, its standard error is complete once the reader has
        // seen the end of it.
        if !matches!(self.child.try_wait(), Ok(None)) {
            if let Some(h) = self.stderr_reader.take() {
                let _ = h.join();
            }
        }
        PeerError::Failed {
            python: self.python.clone(),
            message,
            stderr: self.stderr.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }

    /// Reads one reply line; an `error` reply or a closed pipe is an error.
    fn read_reply(&mut self) -> Result<Value, PeerError> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(self.fail(format!(
                    "the process ended ({status}) without answering (is it a Python 3 interpreter?)"
                )));
            }
            Err(e) => return Err(self.fail(format!("reading its output: {e}"))),
            Ok(_) => {}
        }
        let v: Value = match serde_json::from_str(line.trim()) {
            Ok(v) => v,
            Err(_) => {
                return Err(self.fail(format!(
                    "unexpected output line {:?} (expected one JSON reply)",
                    line.trim()
                )))
            }
        };
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            self.last_missing = v
                .get("missing_module")
                .and_then(Value::as_str)
                .map(str::to_string);
            return Err(self.fail(e.to_string()));
        }
        Ok(v)
    }

    fn request(&mut self, req: Value) -> Result<Value, PeerError> {
        let line = format!("{req}\n");
        let sent = match self.stdin.as_mut() {
            Some(s) => s.write_all(line.as_bytes()).and_then(|_| s.flush()),
            None => Err(std::io::Error::other("input closed")),
        };
        if let Err(e) = sent {
            return Err(self.fail(format!("sending a request: {e}")));
        }
        self.read_reply()
    }

    /// Makes `shapes` the tensor set (gradients and parameters allocated, each optimizer's
    /// first step taken untimed). `bert`: check the shapes against `bert_shapes.py` when the
    /// peer was given its directory. Returns whether they were checked.
    pub fn set(
        &mut self,
        label: &str,
        shapes: &[TensorShape],
        bert: bool,
    ) -> Result<bool, PeerError> {
        let dims: Vec<&Vec<usize>> = shapes.iter().map(|(_, s)| s).collect();
        let r =
            self.request(json!({"cmd": "set", "label": label, "shapes": dims, "bert": bert}))?;
        let want: usize = shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        if r["params"].as_u64() != Some(want as u64) {
            return Err(self.fail(format!(
                "set {label}: torch made {} parameters, expected {want}",
                r["params"]
            )));
        }
        Ok(r["checked"].as_bool().unwrap_or(false))
    }

    /// Times `steps` steps of `opt` on the current set: seconds per step, and the minor page
    /// faults of the process during them.
    pub fn time(
        &mut self,
        opt: TorchOptimizer,
        steps: usize,
    ) -> Result<(Vec<f64>, Option<u64>), PeerError> {
        let r = self.request(json!({"cmd": "time", "opt": opt.key(), "steps": steps}))?;
        let times: Option<Vec<f64>> = r["times"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect());
        match times {
            Some(t) if t.len() == steps => Ok((t, r["minflt"].as_u64())),
            _ => Err(self.fail(format!("unexpected reply to a timing request: {r}"))),
        }
    }
}

impl Drop for TorchPeer {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"{\"cmd\": \"quit\"}\n");
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `python3` from PATH, or None (skip) outside CI; CI installs it (`.ci/run`).
    fn python3() -> Option<PathBuf> {
        let found = Command::new("python3")
            .arg("-c")
            .arg("pass")
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return Some("python3".into());
        }
        if std::env::var_os("CI").is_some() {
            panic!("CI: python3 is missing from PATH");
        }
        eprintln!("skipping: no python3 on PATH");
        None
    }

    #[test]
    fn a_bad_interpreter_path_is_named() {
        let e = TorchPeer::start(Path::new("/nonexistent/bin/python"), 1, None)
            .err()
            .expect("no such interpreter");
        assert!(matches!(e, PeerError::Spawn { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("cannot run the Python interpreter /nonexistent/bin/python")
                && msg.contains("No such file"),
            "{msg}"
        );
    }

    #[test]
    fn a_program_that_is_not_python_is_named() {
        // `true` accepts the arguments, prints nothing and exits 0.
        let e = TorchPeer::start(Path::new("true"), 1, None)
            .err()
            .expect("not a Python");
        let msg = e.to_string();
        assert!(
            matches!(e, PeerError::Failed { .. })
                && msg.contains("ended")
                && msg.contains("without answering"),
            "{msg}"
        );
    }

    #[test]
    fn an_interpreter_without_torch_names_the_missing_module() {
        let Some(py) = python3() else { return };
        let has_torch = Command::new(&py)
            .args(["-c", "import torch"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has_torch {
            eprintln!("skipping: python3 on PATH has torch");
            return;
        }
        let e = TorchPeer::start(&py, 1, None).err().expect("no torch");
        let msg = e.to_string();
        match &e {
            PeerError::MissingModule { module, .. } => assert_eq!(module, "torch", "{msg}"),
            _ => panic!("expected MissingModule, got {e:?}"),
        }
        assert!(
            msg.contains("python3 cannot import the Python module 'torch'")
                && msg.contains("pip install torch"),
            "{msg}"
        );
    }
}
