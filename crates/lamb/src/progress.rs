//! What a run prints while it trains: a Keras-like progress bar and per-epoch line, nothing
//! but the final summary (`--quiet`), or one JSON object per epoch on stdout (`--json`).

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lamb_nn::EpochRecord;
use serde_json::json;

/// Output mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Progress bar on stderr, Keras-like epoch lines and messages on stdout.
    Normal,
    /// Only the final summary.
    Quiet,
    /// JSON lines on stdout; messages on stderr.
    Json,
}

impl Mode {
    /// The mode the `quiet` and `json` flags select.
    pub fn from_flags(quiet: bool, json: bool) -> Mode {
        if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else {
            Mode::Normal
        }
    }
}

/// Progress reporting of one run.
pub struct Progress {
    mode: Mode,
    /// Prefix of every line (`[lamb] `) when several runs share a terminal.
    tag: String,
    bar: Option<ProgressBar>,
    epochs: usize,
}

/// The Keras-style metrics part of an epoch line.
pub fn keras_metrics(r: &EpochRecord) -> String {
    let mut s = format!("loss: {:.4} - accuracy: {:.4}", r.loss, r.accuracy);
    if let Some(v) = r.val_loss {
        s.push_str(&format!(" - val_loss: {v:.4}"));
    }
    if let Some(v) = r.val_accuracy {
        s.push_str(&format!(" - val_accuracy: {v:.4}"));
    }
    s
}

/// The line printed at the end of an epoch, e.g.
/// `Epoch 3/50 - 8.1s - loss: 1.2345 - accuracy: 0.5678 - val_loss: 1.1000 - val_accuracy: 0.6100`.
pub fn epoch_line(r: &EpochRecord, epochs: usize, steps: usize) -> String {
    let secs = r.train_seconds + r.val_seconds;
    let per_step = if steps > 0 {
        format!(" {:.0}ms/step", 1000.0 * r.train_seconds / steps as f64)
    } else {
        String::new()
    };
    format!(
        "Epoch {}/{} - {:.1}s{per_step} - {}",
        r.epoch,
        epochs,
        secs,
        keras_metrics(r)
    )
}

/// The JSON object printed for an epoch in `--json` mode.
pub fn epoch_json(tag: &str, r: &EpochRecord, epochs: usize) -> serde_json::Value {
    json!({
        "event": "epoch",
        "run": tag,
        "epoch": r.epoch,
        "epochs": epochs,
        "loss": r.loss,
        "accuracy": r.accuracy,
        "val_loss": r.val_loss,
        "val_accuracy": r.val_accuracy,
        "seconds": r.train_seconds + r.val_seconds,
        "train_seconds": r.train_seconds,
        "val_seconds": r.val_seconds,
    })
}

impl Progress {
    /// Reporting for a run of `epochs` epochs named `tag` (empty for a single run).
    pub fn new(mode: Mode, tag: &str, epochs: usize) -> Self {
        Progress {
            mode,
            tag: tag.to_string(),
            bar: None,
            epochs,
        }
    }

    fn prefix(&self) -> String {
        if self.tag.is_empty() {
            String::new()
        } else {
            format!("[{}] ", self.tag)
        }
    }

    /// An informational message (stdout normally, stderr in JSON mode, nothing when quiet).
    pub fn info(&self, msg: &str) {
        match self.mode {
            Mode::Normal => self.println(&format!("{}{msg}", self.prefix())),
            Mode::Json => eprintln!("{}{msg}", self.prefix()),
            Mode::Quiet => {}
        }
    }

    /// A warning: printed in every mode, on stderr.
    pub fn warn(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{}{msg}", self.prefix())),
            None => eprintln!("{}{msg}", self.prefix()),
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| {
                println!("{line}");
                let _ = std::io::stdout().flush();
            }),
            None => {
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
        }
    }

    /// A training step finished (`epoch`, `step` 1-based) with the epoch's running metrics.
    pub fn step(&mut self, epoch: usize, step: usize, steps: usize, running: (f64, f64)) {
        if self.mode != Mode::Normal {
            return;
        }
        if self.bar.is_none() {
            let bar =
                ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix}{pos:>4}/{len} [{bar:30}] - ETA: {eta} - {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("{}Epoch {epoch}/{} ", self.prefix(), self.epochs));
            bar.enable_steady_tick(Duration::from_millis(500));
            self.bar = Some(bar);
        }
        if let Some(b) = &self.bar {
            b.set_position(step as u64);
            b.set_message(format!(
                "loss: {:.4} - accuracy: {:.4}",
                running.0, running.1
            ));
        }
    }

    /// Removes the progress bar (before an epoch line or at the end).
    pub fn clear_bar(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    /// A validation pass within an epoch (`--eval-every`): one line, as JSON in JSON mode.
    pub fn eval(&mut self, r: &lamb_nn::EvalRecord, steps: usize) {
        match self.mode {
            Mode::Normal => {
                let line = format!(
                    "{}  epoch {} step {}/{steps} (global step {}) - val_loss: {:.4} - val_accuracy: {:.4}",
                    self.prefix(),
                    r.epoch,
                    r.step,
                    r.global_step,
                    r.val_loss,
                    r.val_accuracy
                );
                self.println(&line);
            }
            Mode::Json => {
                let v = serde_json::json!({
                    "tag": self.tag, "eval": true, "epoch": r.epoch, "step": r.step,
                    "global_step": r.global_step, "images_seen": r.images_seen,
                    "val_loss": r.val_loss, "val_accuracy": r.val_accuracy,
                    "elapsed_seconds": r.elapsed_seconds,
                });
                println!("{v}");
                let _ = std::io::stdout().flush();
            }
            Mode::Quiet => {}
        }
    }

    /// An epoch ended.
    pub fn epoch_end(&mut self, r: &EpochRecord, steps: usize) {
        self.clear_bar();
        match self.mode {
            Mode::Normal => {
                let line = format!("{}{}", self.prefix(), epoch_line(r, self.epochs, steps));
                self.println(&line);
            }
            Mode::Json => {
                println!("{}", epoch_json(&self.tag, r, self.epochs));
                let _ = std::io::stdout().flush();
            }
            Mode::Quiet => {}
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear_bar();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> EpochRecord {
        EpochRecord {
            epoch: 3,
            loss: 1.23456,
            accuracy: 0.5678,
            val_loss: Some(1.1),
            val_accuracy: Some(0.61),
            train_seconds: 7.5,
            val_seconds: 0.6,
            trust_ratios: vec![],
        }
    }

    #[test]
    fn keras_like_line() {
        assert_eq!(
            epoch_line(&rec(), 50, 500),
            "Epoch 3/50 - 8.1s 15ms/step - loss: 1.2346 - accuracy: 0.5678 - val_loss: 1.1000 - val_accuracy: 0.6100"
        );
    }

    #[test]
    fn json_line_has_every_metric() {
        let v = epoch_json("lamb", &rec(), 50);
        let text = v.to_string();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["epoch"], 3);
        assert_eq!(back["val_accuracy"], 0.61);
        assert!(!text.contains('\n'));
        assert_eq!(Mode::from_flags(true, false), Mode::Quiet);
        assert_eq!(Mode::from_flags(false, true), Mode::Json);
    }
}
