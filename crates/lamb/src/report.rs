//! What a run directory says about its numbers: history files (CSV, JSON), statistics of a
//! history (final, best, last-5 mean), the plots of one run, `summary.md`, and the report of
//! `lamb compare` with a conclusion drawn from the numbers.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use lamb_nn::History;

use crate::atomic::write_atomic;
use crate::plots::{write_chart, Chart, Dash, Series};

/// Writes `history.csv` and `history.json` into `dir` (atomically).
pub fn write_history(dir: &Path, history: &History) -> Result<()> {
    let mut csv =
        String::from("epoch,loss,accuracy,val_loss,val_accuracy,train_seconds,val_seconds\n");
    let opt = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
    for r in &history.epochs {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{:.3},{:.3}",
            r.epoch,
            r.loss,
            r.accuracy,
            opt(r.val_loss),
            opt(r.val_accuracy),
            r.train_seconds,
            r.val_seconds
        );
    }
    write_atomic(&dir.join("history.csv"), csv.as_bytes())?;
    if !history.evals.is_empty() {
        // Every validation pass of `--eval-every` (epoch ends included).
        let mut csv = String::from(
            "global_step,epoch,step,images_seen,val_loss,val_accuracy,elapsed_seconds\n",
        );
        for r in &history.evals {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{:.3}",
                r.global_step,
                r.epoch,
                r.step,
                r.images_seen,
                r.val_loss,
                r.val_accuracy,
                r.elapsed_seconds
            );
        }
        write_atomic(&dir.join("evals.csv"), csv.as_bytes())?;
    }
    let json = serde_json::to_string_pretty(history)?;
    write_atomic(&dir.join("history.json"), json.as_bytes())?;
    Ok(())
}

/// Summary statistics of a history (validation = the test set in the classic experiment).
#[derive(Clone, Debug, PartialEq)]
pub struct RunStats {
    /// Epochs completed.
    pub epochs: usize,
    /// Validation accuracy of the last epoch.
    pub final_val_accuracy: f64,
    /// Highest validation accuracy and its epoch (1-based).
    pub best_val_accuracy: (f64, usize),
    /// Mean validation accuracy over the last 5 epochs (or all, if fewer).
    pub last5_val_accuracy: f64,
    /// Validation loss of the last epoch.
    pub final_val_loss: f64,
    /// Lowest validation loss and its epoch.
    pub min_val_loss: (f64, usize),
    /// Mean validation loss over the last 5 epochs.
    pub last5_val_loss: f64,
    /// Training accuracy of the last epoch.
    pub final_train_accuracy: f64,
    /// Training loss of the last epoch.
    pub final_train_loss: f64,
    /// Median seconds per epoch (training + validation).
    pub median_epoch_seconds: f64,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl RunStats {
    /// Statistics of `h`; `None` when it has no epoch with validation.
    pub fn from_history(h: &History) -> Option<RunStats> {
        let last = h.epochs.last()?;
        let acc: Vec<f64> = h
            .epochs
            .iter()
            .map(|r| r.val_accuracy.unwrap_or(f64::NAN))
            .collect();
        let loss: Vec<f64> = h
            .epochs
            .iter()
            .map(|r| r.val_loss.unwrap_or(f64::NAN))
            .collect();
        if acc.iter().all(|a| a.is_nan()) {
            return None;
        }
        let best = acc.iter().enumerate().filter(|(_, a)| !a.is_nan()).fold(
            (f64::NEG_INFINITY, 0),
            |b, (i, &a)| if a > b.0 { (a, i + 1) } else { b },
        );
        let min = loss.iter().enumerate().filter(|(_, a)| !a.is_nan()).fold(
            (f64::INFINITY, 0),
            |b, (i, &a)| if a < b.0 { (a, i + 1) } else { b },
        );
        let k = acc.len().saturating_sub(5);
        Some(RunStats {
            epochs: h.epochs.len(),
            final_val_accuracy: *acc.last()?,
            best_val_accuracy: best,
            last5_val_accuracy: mean(&acc[k..]),
            final_val_loss: *loss.last()?,
            min_val_loss: min,
            last5_val_loss: mean(&loss[k..]),
            final_train_accuracy: last.accuracy,
            final_train_loss: last.loss,
            median_epoch_seconds: median(
                h.epochs
                    .iter()
                    .map(|r| r.train_seconds + r.val_seconds)
                    .collect(),
            ),
        })
    }

    /// How much the validation loss rose from its minimum to the last epoch (0 if it did not).
    pub fn val_loss_rise(&self) -> f64 {
        (self.final_val_loss - self.min_val_loss.0).max(0.0)
    }
}

/// Writes `plots/accuracy`, `plots/loss` and, when `trust_ratios` is set and the history has
/// them, `plots/trust_ratio` (each PNG and SVG) for one run titled `name`.
pub fn write_run_plots(
    dir: &Path,
    name: &str,
    history: &History,
    trust_ratios: bool,
) -> Result<()> {
    let plots = dir.join("plots");
    let ep = |f: &dyn Fn(&lamb_nn::EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .epochs
            .iter()
            .filter_map(|r| f(r).map(|v| (r.epoch as f64, v)))
            .collect()
    };
    let pair = |what: &str, train: Vec<(f64, f64)>, test: Vec<(f64, f64)>| Chart {
        legend_top: what == "loss",
        log_x: false,
        title: format!("{name}: {what}"),
        x_label: "epoch".into(),
        y_label: what.into(),
        series: vec![
            Series {
                label: format!("train {what}"),
                points: train,
                color: 0,
                dash: Dash::Dashed,
            },
            Series {
                label: format!("test {what} (validation)"),
                points: test,
                color: 1,
                dash: Dash::Solid,
            },
        ],
        log_y: false,
    };
    write_chart(
        &plots.join("accuracy"),
        &pair(
            "accuracy",
            ep(&|r| Some(r.accuracy)),
            ep(&|r| r.val_accuracy),
        ),
    )?;
    write_chart(
        &plots.join("loss"),
        &pair("loss", ep(&|r| Some(r.loss)), ep(&|r| r.val_loss)),
    )?;
    if trust_ratios {
        if let Some(chart) = trust_ratio_chart(name, history) {
            write_chart(&plots.join("trust_ratio"), &chart)?;
        }
    }
    Ok(())
}

/// Mean trust ratio per epoch, one line per tensor; `None` without telemetry.
pub fn trust_ratio_chart(name: &str, history: &History) -> Option<Chart> {
    let names: Vec<String> = history
        .epochs
        .iter()
        .find(|r| !r.trust_ratios.is_empty())?
        .trust_ratios
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let series = names
        .iter()
        .enumerate()
        .map(|(i, n)| Series {
            label: n.clone(),
            points: history
                .epochs
                .iter()
                .filter_map(|r| {
                    r.trust_ratios
                        .iter()
                        .find(|t| &t.name == n)
                        .map(|t| (r.epoch as f64, t.mean))
                })
                .collect(),
            color: i,
            dash: if n.ends_with("bias") {
                Dash::Dashed
            } else {
                Dash::Solid
            },
        })
        .collect();
    Some(Chart {
        title: format!("{name}: trust ratio per tensor (mean over each epoch)"),
        x_label: "epoch".into(),
        y_label: "trust ratio".into(),
        series,
        log_y: true,
        legend_top: false,
        log_x: false,
    })
}

/// Reference numbers of the classic Keras experiment on this project's CIFAR-10 JPEG archive
/// (source: `../shared/data/README.md`, "Reference results on this exact data": TensorFlow
/// 2.15, tensorflow-addons 0.23, batch 100, 50 epochs, same 2-core machine kind). Shown to
/// users for comparison; not used by any test.
#[derive(Clone, Copy, Debug)]
pub struct Reference {
    /// Optimizer and activation, as the source names them.
    pub label: &'static str,
    /// Validation accuracy at epochs 1, 10, 20, 30, 50.
    pub val_accuracy_at: [(usize, f64); 5],
    /// Mean validation accuracy of epochs 46-50.
    pub last5_val_accuracy: f64,
    /// Training accuracy at epoch 50.
    pub train_accuracy_50: f64,
    /// Median seconds per epoch.
    pub median_epoch_seconds: f64,
}

/// Reference of the LAMB + ReLU run (see [`Reference`]).
pub const REFERENCE_LAMB: Reference = Reference {
    label: "LAMB lr 1e-3, betas 0.9/0.999, eps 1e-6, wd 0, ReLU",
    val_accuracy_at: [
        (1, 0.362),
        (10, 0.609),
        (20, 0.654),
        (30, 0.680),
        (50, 0.686),
    ],
    last5_val_accuracy: 0.6854,
    train_accuracy_50: 0.786,
    median_epoch_seconds: 8.9,
};

/// Reference of the Adam + SELU run (see [`Reference`]).
pub const REFERENCE_ADAM: Reference = Reference {
    label: "Adam (Keras defaults, eps 1e-7), SELU",
    val_accuracy_at: [
        (1, 0.523),
        (10, 0.628),
        (20, 0.636),
        (30, 0.638),
        (50, 0.618),
    ],
    last5_val_accuracy: 0.6184,
    train_accuracy_50: 0.808,
    median_epoch_seconds: 10.6,
};

/// One side of a comparison: its name, history and statistics.
pub struct Side<'a> {
    /// Display name (`LAMB + ReLU`).
    pub name: &'a str,
    /// The run's history.
    pub history: &'a History,
    /// Its statistics.
    pub stats: RunStats,
    /// The reference of the classic experiment for this side.
    pub reference: Reference,
}

/// Whether the validation loss clearly rose after its minimum: the minimum is before the last
/// epoch and the last value is at least 2% above it.
pub fn overfits(s: &RunStats) -> bool {
    s.min_val_loss.1 < s.epochs && s.final_val_loss > s.min_val_loss.0 * 1.02
}

/// Conclusion sentences that follow from the numbers of two runs (`a` is LAMB, `b` Adam in
/// `lamb compare`). `classic` tells whether the runs used the classic settings (50 epochs on
/// the full data), so that the reference applies.
pub fn conclusion(a: &Side<'_>, b: &Side<'_>, classic: bool) -> Vec<String> {
    let mut out = Vec::new();
    let pts = |x: f64| x * 100.0;
    let (fa, fb) = (a.stats.final_val_accuracy, b.stats.final_val_accuracy);
    let (la, lb) = (a.stats.last5_val_accuracy, b.stats.last5_val_accuracy);
    let cmp = |x: f64, y: f64| {
        if (x - y).abs() < 0.0005 {
            "ties with"
        } else if x > y {
            "beats"
        } else {
            "trails"
        }
    };
    out.push(format!(
        "{} {} {} on final validation (test-set) accuracy: {:.2}% vs {:.2}% ({:+.2} points).",
        a.name,
        cmp(fa, fb),
        b.name,
        pts(fa),
        pts(fb),
        pts(fa - fb)
    ));
    out.push(format!(
        "Over the last {} epochs the mean validation accuracy is {:.2}% for {} vs {:.2}% for {} \
         ({:+.2} points), so {}.",
        a.stats.epochs.min(5),
        pts(la),
        a.name,
        pts(lb),
        b.name,
        pts(la - lb),
        if (la - lb).abs() < 0.0005 {
            "neither is ahead once epoch-to-epoch noise is averaged out".to_string()
        } else if la > lb {
            format!("{} is ahead beyond single-epoch noise", a.name)
        } else {
            format!("{} is ahead beyond single-epoch noise", b.name)
        }
    ));
    for s in [a, b] {
        let st = &s.stats;
        if overfits(st) {
            let rise = 100.0 * st.val_loss_rise() / st.min_val_loss.0;
            out.push(format!(
                "{}'s validation loss reached its minimum {:.4} at epoch {} and then rose to \
                 {:.4} at epoch {} (+{:.1}%) while its training accuracy reached {:.2}%: {}.",
                s.name,
                st.min_val_loss.0,
                st.min_val_loss.1,
                st.final_val_loss,
                st.epochs,
                rise,
                pts(st.final_train_accuracy),
                if rise >= 10.0 {
                    format!("it overfits after epoch {}", st.min_val_loss.1)
                } else {
                    "a mild rise".to_string()
                }
            ));
        } else {
            out.push(format!(
                "{}'s validation loss is at or near its minimum at the end ({:.4} at epoch {}, \
                 minimum {:.4} at epoch {}): no sign of overfitting yet.",
                s.name, st.final_val_loss, st.epochs, st.min_val_loss.0, st.min_val_loss.1
            ));
        }
    }
    if classic {
        for s in [a, b] {
            let d = pts(s.stats.last5_val_accuracy - s.reference.last5_val_accuracy);
            out.push(format!(
                "{}: last-5 mean {:.2}% vs {:.2}% in the Keras reference ({:+.2} points{}).",
                s.name,
                pts(s.stats.last5_val_accuracy),
                pts(s.reference.last5_val_accuracy),
                d,
                if d.abs() <= 1.5 {
                    ", within 1.5 points: reproduced"
                } else {
                    ", more than 1.5 points away"
                }
            ));
        }
    } else {
        out.push(
            "These runs differ from the classic setting (50 epochs, full data, batch 100), so \
             the Keras reference below is shown for orientation only."
                .into(),
        );
    }
    out
}

fn pct(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{:.2}%", x * 100.0)
    }
}

/// The Markdown of `report.md` for a comparison of `a` and `b`; `settings` describes the shared
/// settings in one line each.
pub fn compare_markdown(a: &Side<'_>, b: &Side<'_>, classic: bool, settings: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# LAMB vs Adam on CIFAR-10\n");
    for s in settings {
        let _ = writeln!(md, "- {s}");
    }
    let _ = writeln!(
        md,
        "\nValidation data is the CIFAR-10 test set, as in the original experiment.\n"
    );
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(md, "| | {} | {} |\n|---|---|---|", a.name, b.name);
    type Cell<'a> = &'a dyn Fn(&RunStats) -> String;
    let rows: [(&str, Cell<'_>); 10] = [
        ("epochs", &|s| s.epochs.to_string()),
        ("final val accuracy", &|s| pct(s.final_val_accuracy)),
        ("best val accuracy (epoch)", &|s| {
            format!("{} ({})", pct(s.best_val_accuracy.0), s.best_val_accuracy.1)
        }),
        ("mean val accuracy, last 5 epochs", &|s| {
            pct(s.last5_val_accuracy)
        }),
        ("final val loss", &|s| format!("{:.4}", s.final_val_loss)),
        ("min val loss (epoch)", &|s| {
            format!("{:.4} ({})", s.min_val_loss.0, s.min_val_loss.1)
        }),
        ("mean val loss, last 5 epochs", &|s| {
            format!("{:.4}", s.last5_val_loss)
        }),
        ("final train accuracy", &|s| pct(s.final_train_accuracy)),
        ("final train loss", &|s| {
            format!("{:.4}", s.final_train_loss)
        }),
        ("median seconds per epoch", &|s| {
            format!("{:.1}", s.median_epoch_seconds)
        }),
    ];
    for (label, f) in rows {
        let _ = writeln!(md, "| {label} | {} | {} |", f(&a.stats), f(&b.stats));
    }
    let _ = writeln!(md, "\n## Conclusion\n");
    for line in conclusion(a, b, classic) {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(md, "\n## Reference (Keras, same data)\n");
    let _ = writeln!(
        md,
        "The classic Keras experiment (TensorFlow 2.15, tensorflow-addons 0.23 LAMB, batch 100, \
         50 epochs) on this project's CIFAR-10 JPEG archive, as recorded in \
         `../shared/data/README.md`:\n"
    );
    let _ = writeln!(
        md,
        "| run | val acc at epochs 1 / 10 / 20 / 30 / 50 | ours at the same epochs | last-5 mean (ours) | train acc at 50 | median s/epoch |\n|---|---|---|---|---|---|"
    );
    for s in [a, b] {
        let r = s.reference;
        let theirs: Vec<String> = r
            .val_accuracy_at
            .iter()
            .map(|(_, v)| format!("{v:.3}"))
            .collect();
        let ours: Vec<String> = r
            .val_accuracy_at
            .iter()
            .map(|(e, _)| {
                s.history
                    .epochs
                    .get(e - 1)
                    .and_then(|x| x.val_accuracy)
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_else(|| "-".into())
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.4} ({:.4}) | {:.3} | {:.1} |",
            r.label,
            theirs.join(" / "),
            ours.join(" / "),
            r.last5_val_accuracy,
            s.stats.last5_val_accuracy,
            r.train_accuracy_50,
            r.median_epoch_seconds
        );
    }
    let _ = writeln!(
        md,
        "\nOn the official CIFAR-10 binary release the same experiment was published at 0.6949 \
         (LAMB) and 0.6396 (Adam).\n"
    );
    let _ = writeln!(md, "## Plots\n");
    let _ = writeln!(
        md,
        "![accuracy](compare_accuracy.png)\n\n![loss](compare_loss.png)\n"
    );
    md
}

/// Writes `compare_accuracy` and `compare_loss` (PNG and SVG) into `dir`: both runs, train
/// dashed and test solid, one colour per run.
pub fn write_compare_plots(dir: &Path, a: &Side<'_>, b: &Side<'_>) -> Result<()> {
    let series = |get: &dyn Fn(&lamb_nn::EpochRecord) -> Option<f64>,
                  val: &dyn Fn(&lamb_nn::EpochRecord) -> Option<f64>,
                  what: &str| {
        let mut v = Vec::new();
        for (i, s) in [a, b].iter().enumerate() {
            let pts = |f: &dyn Fn(&lamb_nn::EpochRecord) -> Option<f64>| {
                s.history
                    .epochs
                    .iter()
                    .filter_map(|r| f(r).map(|x| (r.epoch as f64, x)))
                    .collect::<Vec<_>>()
            };
            v.push(Series {
                label: format!("{} train {what}", s.name),
                points: pts(get),
                color: i,
                dash: Dash::Dashed,
            });
            v.push(Series {
                label: format!("{} test {what}", s.name),
                points: pts(val),
                color: i,
                dash: Dash::Solid,
            });
        }
        v
    };
    let title = format!("{} vs {} on CIFAR-10", a.name, b.name);
    write_chart(
        &dir.join("compare_accuracy"),
        &Chart {
            title: format!("{title}: accuracy"),
            x_label: "epoch".into(),
            y_label: "accuracy".into(),
            series: series(&|r| Some(r.accuracy), &|r| r.val_accuracy, "accuracy"),
            log_y: false,
            legend_top: false,
            log_x: false,
        },
    )?;
    write_chart(
        &dir.join("compare_loss"),
        &Chart {
            title: format!("{title}: loss"),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            series: series(&|r| Some(r.loss), &|r| r.val_loss, "loss"),
            log_y: false,
            legend_top: true,
            log_x: false,
        },
    )?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lamb_nn::{EpochRecord, TensorStats};

    /// A synthetic history from validation accuracy and loss curves.
    pub(crate) fn history(acc: &[f64], loss: &[f64]) -> History {
        History {
            epochs: acc
                .iter()
                .zip(loss)
                .enumerate()
                .map(|(i, (&a, &l))| EpochRecord {
                    epoch: i + 1,
                    loss: l * 0.8,
                    accuracy: a + 0.05,
                    val_loss: Some(l),
                    val_accuracy: Some(a),
                    train_seconds: 1.0 + i as f64,
                    val_seconds: 0.5,
                    trust_ratios: vec![
                        TensorStats {
                            name: "conv2d/kernel".into(),
                            mean: 0.5 + 0.01 * i as f64,
                            min: 0.1,
                            max: 1.0,
                            last: 0.5,
                            weight_norm_last: 1.0,
                            update_norm_last: 2.0,
                        },
                        TensorStats {
                            name: "conv2d/bias".into(),
                            mean: 0.02,
                            min: 0.01,
                            max: 0.03,
                            last: 0.02,
                            weight_norm_last: 0.1,
                            update_norm_last: 5.0,
                        },
                    ],
                })
                .collect(),
            evals: vec![],
        }
    }

    #[test]
    fn stats_of_a_history() {
        let h = history(
            &[0.3, 0.5, 0.6, 0.58, 0.62, 0.61, 0.6],
            &[1.5, 1.2, 1.0, 1.05, 1.1, 1.2, 1.3],
        );
        let s = RunStats::from_history(&h).unwrap();
        assert_eq!(s.epochs, 7);
        assert_eq!(s.final_val_accuracy, 0.6);
        assert_eq!(s.best_val_accuracy, (0.62, 5));
        assert!((s.last5_val_accuracy - (0.6 + 0.58 + 0.62 + 0.61 + 0.6) / 5.0).abs() < 1e-12);
        assert_eq!(s.min_val_loss, (1.0, 3));
        assert!((s.val_loss_rise() - 0.3).abs() < 1e-12);
        assert_eq!(s.median_epoch_seconds, 4.5);
        assert!(overfits(&s));
        assert!(RunStats::from_history(&History::default()).is_none());
    }

    fn sides<'a>(ha: &'a History, hb: &'a History) -> (Side<'a>, Side<'a>) {
        (
            Side {
                name: "LAMB + ReLU",
                history: ha,
                stats: RunStats::from_history(ha).unwrap(),
                reference: REFERENCE_LAMB,
            },
            Side {
                name: "Adam + SELU",
                history: hb,
                stats: RunStats::from_history(hb).unwrap(),
                reference: REFERENCE_ADAM,
            },
        )
    }

    #[test]
    fn conclusion_follows_the_numbers() {
        let ha = history(&[0.4, 0.6, 0.65, 0.68, 0.69], &[1.6, 1.2, 1.0, 0.95, 0.92]);
        let hb = history(&[0.5, 0.62, 0.63, 0.62, 0.61], &[1.4, 1.1, 1.05, 1.15, 1.3]);
        let (a, b) = sides(&ha, &hb);
        let c = conclusion(&a, &b, false).join("\n");
        assert!(c.contains("LAMB + ReLU beats Adam + SELU"), "{c}");
        assert!(c.contains("69.00% vs 61.00% (+8.00 points)"), "{c}");
        assert!(
            c.contains("Adam + SELU's validation loss reached its minimum 1.0500 at epoch 3"),
            "{c}"
        );
        assert!(
            c.contains("LAMB + ReLU's validation loss is at or near its minimum"),
            "{c}"
        );
        assert!(c.contains("orientation only"), "{c}");
        // Swap the roles: the text follows.
        let (b2, a2) = sides(&hb, &ha);
        let c2 = conclusion(&b2, &a2, false).join("\n");
        assert!(c2.contains("LAMB + ReLU trails Adam + SELU"), "{c2}");
        // Reproduction check against the reference when the setting is classic.
        let c3 = conclusion(&a, &b, true).join("\n");
        assert!(c3.contains("Keras reference"), "{c3}");
    }

    #[test]
    fn report_and_plots_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let ha = history(&[0.4, 0.6, 0.65], &[1.6, 1.2, 1.0]);
        let hb = history(&[0.5, 0.62, 0.63], &[1.4, 1.1, 1.2]);
        let (a, b) = sides(&ha, &hb);
        let md = compare_markdown(&a, &b, false, &["epochs: 3".into()]);
        assert!(
            md.contains("| final val accuracy | 65.00% | 63.00% |"),
            "{md}"
        );
        assert!(
            md.contains("| min val loss (epoch) | 1.0000 (3) | 1.1000 (2) |"),
            "{md}"
        );
        write_compare_plots(dir.path(), &a, &b).unwrap();
        write_run_plots(dir.path(), "LAMB", &ha, true).unwrap();
        write_history(dir.path(), &ha).unwrap();
        for f in [
            "compare_accuracy.png",
            "compare_loss.svg",
            "plots/accuracy.png",
            "plots/loss.svg",
            "plots/trust_ratio.png",
            "plots/trust_ratio.svg",
            "history.csv",
            "history.json",
        ] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        let csv = std::fs::read_to_string(dir.path().join("history.csv")).unwrap();
        assert_eq!(csv.lines().count(), 4);
        assert!(
            csv.lines()
                .nth(2)
                .unwrap()
                .starts_with("2,0.96,0.65,1.2,0.6,"),
            "{csv}"
        );
        let back: History = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("history.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(back, ha);
    }
}
