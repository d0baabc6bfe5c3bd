//! Reading a sweep's runs back and writing its results: `sweep.csv` (every run), `sweep.md`
//! (best validation accuracy per optimizer and batch size with the learning rate that
//! achieved it, and what the numbers can and cannot support), and the plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use lamb_nn::History;

use super::spec::{RunPlan, SweepSpec};
use super::status::RunStatus;
use crate::atomic::write_atomic;
use crate::plots::{write_chart, Chart, Dash, Series};
use crate::report::{trust_ratio_chart, RunStats};

/// What is known about one run of the grid.
#[derive(Clone, Debug)]
pub struct Row {
    /// The plan.
    pub plan: RunPlan,
    /// Optimizer label (`lamb`, `lars-optax`).
    pub label: String,
    /// Recorded end (`None`: not finished).
    pub status: Option<RunStatus>,
    /// Epochs done so far.
    pub epochs_done: usize,
    /// Statistics of its history (`None` before the first epoch).
    pub stats: Option<RunStats>,
    /// Seconds of training and validation summed over its epochs.
    pub seconds: f64,
    /// Its history (for trust-ratio plots).
    pub history: History,
}

impl Row {
    /// `completed`, `failed`, `partial (k/E epochs)` or `pending`.
    pub fn state(&self, epochs: usize) -> String {
        match &self.status {
            Some(s) => s.state.clone(),
            None if self.epochs_done > 0 => {
                format!("partial ({}/{epochs} epochs)", self.epochs_done)
            }
            None => "pending".into(),
        }
    }

    fn completed(&self) -> bool {
        self.status.as_ref().is_some_and(RunStatus::completed)
    }
}

fn read_history(run_dir: &Path) -> History {
    std::fs::read_to_string(run_dir.join("history.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// A short result suffix for progress lines: `: best val acc 0.6123 (epoch 6)`.
pub fn one_line(run_dir: &Path) -> String {
    match RunStats::from_history(&read_history(run_dir)) {
        Some(s) => format!(
            ": best val acc {:.4} (epoch {}), final {:.4}",
            s.best_val_accuracy.0, s.best_val_accuracy.1, s.final_val_accuracy
        ),
        None => String::new(),
    }
}

/// Every run of the plan with what its directory holds.
pub fn collect(spec: &SweepSpec, dir: &Path) -> Vec<Row> {
    spec.plan()
        .into_iter()
        .map(|plan| {
            let d = dir.join("runs").join(&plan.id);
            let history = read_history(&d);
            Row {
                label: spec.optimizers[plan.opt].label(),
                status: RunStatus::read(&d),
                epochs_done: history.epochs.len(),
                stats: RunStats::from_history(&history),
                seconds: history
                    .epochs
                    .iter()
                    .map(|r| r.train_seconds + r.val_seconds)
                    .sum(),
                history,
                plan,
            }
        })
        .collect()
}

/// The completed run with the highest best-epoch validation accuracy for optimizer `opt` at
/// `batch`.
pub fn best(rows: &[Row], opt: usize, batch: usize) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.plan.opt == opt && r.plan.batch == batch && r.completed())
        .filter(|r| r.stats.is_some())
        .max_by(|a, b| {
            let (x, y) = (a.stats.as_ref(), b.stats.as_ref());
            let key = |s: Option<&RunStats>| s.map_or(f64::NEG_INFINITY, |s| s.best_val_accuracy.0);
            key(x).total_cmp(&key(y))
        })
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map_or(String::new(), |v| format!("{v:.digits$}"))
}

/// Writes `sweep.csv`.
pub fn write_csv(spec: &SweepSpec, rows: &[Row], dir: &Path) -> Result<PathBuf> {
    let mut s = String::from(
        "run,optimizer,batch_size,lr,lr_multiplier,status,epochs_done,best_val_accuracy,best_epoch,final_val_accuracy,final_val_loss,final_train_accuracy,seconds\n",
    );
    for r in rows {
        let st = r.stats.as_ref();
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{:.1}",
            r.plan.id,
            r.label,
            r.plan.batch,
            r.plan.lr,
            spec.lr_multipliers[r.plan.mult],
            r.state(spec.epochs).replace(',', ";"),
            r.epochs_done,
            fmt_opt(st.map(|s| s.best_val_accuracy.0), 4),
            st.map_or(String::new(), |s| s.best_val_accuracy.1.to_string()),
            fmt_opt(st.map(|s| s.final_val_accuracy), 4),
            fmt_opt(st.map(|s| s.final_val_loss), 4),
            fmt_opt(st.map(|s| s.final_train_accuracy), 4),
            r.seconds
        );
    }
    let path = dir.join("sweep.csv");
    write_atomic(&path, s.as_bytes())?;
    Ok(path)
}

/// The best-per-cell table in markdown: rows optimizers, columns batch sizes.
pub fn table(spec: &SweepSpec, rows: &[Row]) -> String {
    let mut s = String::from("| optimizer |");
    for b in &spec.batch_sizes {
        let _ = write!(s, " batch {b} |");
    }
    s.push_str("\n|---|");
    for _ in &spec.batch_sizes {
        s.push_str("---|");
    }
    s.push('\n');
    let last = spec.lr_multipliers.len() - 1;
    for (oi, o) in spec.optimizers.iter().enumerate() {
        let _ = write!(s, "| {} |", o.label());
        for &b in &spec.batch_sizes {
            let cell: Vec<&Row> = rows
                .iter()
                .filter(|r| r.plan.opt == oi && r.plan.batch == b)
                .collect();
            let failed = cell
                .iter()
                .filter(|r| r.status.as_ref().is_some_and(|s| !s.completed()))
                .count();
            let pending = cell.iter().filter(|r| r.status.is_none()).count();
            let mut text = match best(rows, oi, b) {
                Some(r) => {
                    let edge = r.plan.mult == 0 || r.plan.mult == last;
                    format!(
                        "{:.4} (lr {:.3e}{})",
                        r.stats.as_ref().map_or(f64::NAN, |s| s.best_val_accuracy.0),
                        r.plan.lr,
                        if edge && last > 0 { ", edge" } else { "" }
                    )
                }
                None => "-".into(),
            };
            if failed > 0 {
                let _ = write!(text, "; {failed} failed");
            }
            if pending > 0 {
                let _ = write!(text, "; {pending} not finished");
            }
            let _ = write!(s, " {text} |");
        }
        s.push('\n');
    }
    s
}

fn spec_line(spec: &SweepSpec) -> String {
    format!(
        "{} epochs per run, {} schedule (warmup {} epochs{}), learning rate = base x {} (batch / {}) x {{{}}}, seed {}, {} activations, {} training images, {} test images",
        spec.epochs,
        spec.schedule.as_str(),
        spec.warmup_epochs,
        if spec.schedule == crate::config::ScheduleKind::Poly {
            format!(", decay power {}", spec.decay_power)
        } else {
            String::new()
        },
        match spec.scaling {
            super::spec::Scaling::Sqrt => "sqrt",
            super::spec::Scaling::Linear => "",
            super::spec::Scaling::None => "1 *",
        },
        spec.base_batch,
        spec.lr_multipliers
            .iter()
            .map(|m| format!("{m}"))
            .collect::<Vec<_>>()
            .join(", "),
        spec.seed,
        spec.activation.as_str(),
        spec.train_images.map_or("all 50,000".into(), |n| n.to_string()),
        spec.test_images.map_or("all 10,000".into(), |n| n.to_string()),
    )
}

/// Writes `sweep.md`, `sweep.csv` and the plots; returns the markdown table (for printing).
pub fn write_all(spec: &SweepSpec, dir: &Path, command: &str) -> Result<String> {
    let rows = collect(spec, dir);
    write_csv(spec, &rows, dir)?;
    let plots = write_plots(spec, &rows, dir)?;
    let t = table(spec, &rows);
    let done = rows.iter().filter(|r| r.status.is_some()).count();
    let hours: f64 = rows.iter().map(|r| r.seconds).sum::<f64>() / 3600.0;
    let mut md = format!(
        "# Batch-size sweep\n\nCommand: `{command}`\n\nGrid: {} optimizers x {} batch sizes x {} learning rates = {} runs ({} finished); {}.\nTraining and validation time summed over runs: {:.2} h (runs overlap when `--jobs` > 1).\n\n## Best validation accuracy per optimizer and batch size\n\nEach cell: the highest validation accuracy any epoch of any completed run reached, and that run's peak learning rate; `edge` marks a best rate at the end of the grid (the true optimum may lie outside it); `failed` counts runs that stopped with an error (usually divergence: non-finite loss or update).\n\n{t}\n",
        spec.optimizers.len(),
        spec.batch_sizes.len(),
        spec.lr_multipliers.len(),
        rows.len(),
        done,
        spec_line(spec),
        hours,
    );
    md.push_str("## What this can and cannot support\n\n");
    md.push_str("- One seed per run: differences of about one point between cells are within seed-to-seed noise of this CNN (not measured here; repeat with other `seed` values to measure it).\n");
    md.push_str("- Validation is the CIFAR-10 test set and each cell is the best over epochs and learning rates, so the figures are optimistic for every optimizer alike; they rank optimizers, they do not estimate held-out accuracy.\n");
    md.push_str("- The epoch budget is fixed, so larger batches take proportionally fewer steps; a short budget favours small batches for every optimizer, and shows whether an optimizer degrades more slowly, not whether it would catch up with more epochs.\n");
    md.push_str("- This CNN has 6 tensors and 42,442 parameters; the LAMB paper's claims concern deep networks (BERT, ResNet-50) where per-layer gradient scales differ far more.\n\n");
    md.push_str("## Plots\n\n");
    for p in &plots {
        let _ = writeln!(md, "- `{}`", p.strip_prefix(dir).unwrap_or(p).display());
    }
    md.push_str("\n## Every run\n\n| run | status | epochs | best val acc (epoch) | final val acc | final val loss | train acc | seconds |\n|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let st = r.stats.as_ref();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            r.plan.id,
            r.state(spec.epochs),
            r.epochs_done,
            st.map_or(String::new(), |s| format!(
                "{:.4} ({})",
                s.best_val_accuracy.0, s.best_val_accuracy.1
            )),
            fmt_opt(st.map(|s| s.final_val_accuracy), 4),
            fmt_opt(st.map(|s| s.final_val_loss), 4),
            fmt_opt(st.map(|s| s.final_train_accuracy), 4),
            r.seconds
        );
    }
    let failures: Vec<&Row> = rows
        .iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| !s.completed()))
        .collect();
    if !failures.is_empty() {
        md.push_str("\n## Failed runs\n\n");
        for r in failures {
            let msg = r.status.as_ref().map_or("", |s| s.message.as_str());
            let _ = writeln!(md, "- {}: {}", r.plan.id, msg.replace('\n', " / "));
        }
    }
    write_atomic(&dir.join("sweep.md"), md.as_bytes())?;
    Ok(t)
}

/// Accuracy vs batch size (one line per optimizer), and per-tensor trust ratios over training
/// for LAMB and LARS at the smallest and largest batch (their best runs).
fn write_plots(spec: &SweepSpec, rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>> {
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)?;
    let mut out = Vec::new();
    let series = spec
        .optimizers
        .iter()
        .enumerate()
        .map(|(oi, o)| Series {
            label: o.label(),
            points: spec
                .batch_sizes
                .iter()
                .filter_map(|&b| {
                    best(rows, oi, b)
                        .and_then(|r| r.stats.as_ref().map(|s| (b as f64, s.best_val_accuracy.0)))
                })
                .collect(),
            color: oi,
            dash: Dash::Solid,
        })
        .collect();
    let chart = Chart {
        title: format!(
            "Best validation accuracy vs batch size ({} epochs, best of {} learning rates)",
            spec.epochs,
            spec.lr_multipliers.len()
        ),
        x_label: "batch size".into(),
        y_label: "validation accuracy".into(),
        series,
        log_y: false,
        legend_top: false,
        log_x: true,
    };
    out.push(write_chart(&plots.join("accuracy_vs_batch"), &chart)?.0);
    let (Some(&lo), Some(&hi)) = (spec.batch_sizes.iter().min(), spec.batch_sizes.iter().max())
    else {
        return Ok(out);
    };
    for (oi, o) in spec.optimizers.iter().enumerate() {
        if !o.optimizer.has_trust_ratio() {
            continue;
        }
        let mut sizes = vec![lo];
        if hi != lo {
            sizes.push(hi);
        }
        for b in sizes {
            if let Some(r) = best(rows, oi, b) {
                let name = format!("{} batch {b} lr {:.3e}", o.label(), r.plan.lr);
                if let Some(c) = trust_ratio_chart(&name, &r.history) {
                    let stem = plots.join(format!("trust_ratio_{}_b{b}", o.label()));
                    out.push(write_chart(&stem, &c)?.0);
                }
            }
        }
    }
    Ok(out)
}
