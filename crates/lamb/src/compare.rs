//! `lamb compare`: the classic pair (LAMB + ReLU with lr 1e-3, betas 0.9/0.999, eps 1e-6, no
//! weight decay; Adam + SELU with Keras defaults), each a normal run directory under
//! `OUT/lamb` and `OUT/adam`, then `OUT/report.md` and the combined plots.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::checkpoint::{self, Checkpoint};
use crate::config::{utc_stamp, ActivationKind, OptimizerKind, RunConfig, Settings};
use crate::progress::{Mode, Progress};
use crate::report::{
    compare_markdown, write_compare_plots, RunStats, Side, REFERENCE_ADAM, REFERENCE_LAMB,
};
use crate::run::{self, RunEnd};

/// Settings shared by both runs of a comparison: flags, or top-level keys of its config file
/// (which may also hold `[lamb]` and `[adam]` tables of optimizer settings for each side).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CompareSettings {
    /// Data: official-layout directory or image archive [default: ../shared/data or $LAMB_DATA].
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Output directory: runs go to OUT/lamb and OUT/adam, the report to OUT/report.md
    /// [default: runs/compare-<UTC time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seed of both runs [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Epochs of each run [default: 50].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size [default: 100].
    #[arg(long)]
    #[serde(alias = "batch_size")]
    pub batch_size: Option<usize>,
    /// Engine threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Developer option: N training images spread evenly over the split.
    #[arg(long, hide = true, value_name = "N")]
    #[serde(alias = "limit_train")]
    pub limit_train: Option<usize>,
    /// Developer option: N test images spread evenly over the split.
    #[arg(long, hide = true, value_name = "N")]
    #[serde(alias = "limit_test")]
    pub limit_test: Option<usize>,
    /// Print only the final summaries and the conclusion.
    #[arg(long, short = 'q')]
    #[serde(default)]
    pub quiet: bool,
    /// One JSON object per epoch on stdout (with a `run` field), then a summary object.
    #[arg(long)]
    #[serde(default)]
    pub json: bool,
    /// When no data is found, fail instead of downloading CIFAR-10 into ./data.
    #[arg(long)]
    #[serde(default)]
    pub no_download: bool,
    /// Model of both sides: seed-cnn (the classic experiment), resnet20 or a Keras model JSON
    /// file [default: seed-cnn].
    #[arg(long, value_name = "NAME|FILE")]
    pub model: Option<String>,
}

/// A parsed compare config file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompareFile {
    /// Shared settings.
    pub common: CompareSettings,
    /// Overrides for the LAMB side.
    pub lamb: Settings,
    /// Overrides for the Adam side.
    pub adam: Settings,
}

const SIDE_KEYS: &str =
    "optimizer, preset, lr, beta1, beta2, epsilon, weight-decay, momentum, activation and a [hyper] table";

fn side_only_optimizer_keys(s: &Settings, table: &str) -> Result<()> {
    let shared = [
        ("data", s.data.is_some()),
        ("out", s.out.is_some()),
        ("seed", s.seed.is_some()),
        ("epochs", s.epochs.is_some()),
        ("batch-size", s.batch_size.is_some()),
        ("threads", s.threads.is_some()),
        ("limit-train", s.limit_train.is_some()),
        ("limit-test", s.limit_test.is_some()),
        ("quiet", s.quiet),
        ("json", s.json),
    ];
    if let Some((k, _)) = shared.iter().find(|(_, set)| *set) {
        bail!("`{k}` in [{table}]: set it at the top level of the compare config (it applies to both runs); [{table}] takes {SIDE_KEYS}");
    }
    Ok(())
}

impl CompareFile {
    /// Parses a compare config's TOML text.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| crate::config::toml_error(&e, text, origin))?;
        let mut side = |name: &str| -> Result<Settings> {
            match table.remove(name) {
                None => Ok(Settings::default()),
                Some(toml::Value::Table(t)) => {
                    let s: Settings = t.try_into().with_context(|| {
                        format!("invalid [{name}] table in config file {origin}")
                    })?;
                    side_only_optimizer_keys(&s, name)?;
                    Ok(s)
                }
                Some(_) => bail!(
                    "`{name}` in config file {origin} must be a table [{name}] of {SIDE_KEYS}"
                ),
            }
        };
        let lamb = side("lamb")?;
        let adam = side("adam")?;
        let common: CompareSettings = toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("invalid config file {origin}"))?;
        Ok(CompareFile { common, lamb, adam })
    }

    /// Reads a compare config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::config::read_config_text(path)?;
        Self::from_toml(&text, &path.display().to_string())
    }
}

impl CompareSettings {
    fn overridden_by(&self, o: &CompareSettings) -> CompareSettings {
        CompareSettings {
            data: o.data.clone().or_else(|| self.data.clone()),
            out: o.out.clone().or_else(|| self.out.clone()),
            seed: o.seed.or(self.seed),
            epochs: o.epochs.or(self.epochs),
            batch_size: o.batch_size.or(self.batch_size),
            threads: o.threads.or(self.threads),
            limit_train: o.limit_train.or(self.limit_train),
            limit_test: o.limit_test.or(self.limit_test),
            quiet: o.quiet || self.quiet,
            json: o.json || self.json,
            no_download: o.no_download || self.no_download,
            model: o.model.clone().or_else(|| self.model.clone()),
        }
    }
}

/// The two resolved run configs of a comparison and its output directory.
pub fn resolve(
    file: &CompareFile,
    flags: &CompareSettings,
) -> Result<(PathBuf, RunConfig, RunConfig)> {
    let c = file.common.overridden_by(flags);
    let out = c
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("compare-{}", utc_stamp())));
    let side = |name: &str, opt: OptimizerKind, act: ActivationKind, over: &Settings| {
        let base = Settings {
            data: c.data.clone(),
            out: Some(out.join(name)),
            seed: c.seed,
            epochs: c.epochs,
            batch_size: c.batch_size,
            optimizer: Some(opt),
            activation: Some(act),
            threads: c.threads,
            limit_train: c.limit_train,
            limit_test: c.limit_test,
            quiet: c.quiet,
            json: c.json,
            no_download: c.no_download,
            model: c.model.clone(),
            ..Default::default()
        };
        base.overridden_by(over)
            .resolve("compare")
            .with_context(|| format!("settings of the {name} run"))
    };
    let lamb = side(
        "lamb",
        OptimizerKind::Lamb,
        ActivationKind::Relu,
        &file.lamb,
    )?;
    let adam = side(
        "adam",
        OptimizerKind::Adam,
        ActivationKind::Selu,
        &file.adam,
    )?;
    Ok((out, lamb, adam))
}

/// Whether both runs use the classic experiment's settings (so the reference applies).
pub fn is_classic(file: &CompareFile, lamb: &RunConfig) -> bool {
    lamb.epochs == 50
        && lamb.model == crate::config::SEED_CNN
        && lamb.batch_size == 100
        && lamb.limit_train.is_none()
        && lamb.limit_test.is_none()
        && file.lamb == Settings::default()
        && file.adam == Settings::default()
}

/// Runs (or resumes) both runs and writes the report. Returns `Ok(false)` when interrupted.
pub fn compare(file: &CompareFile, flags: &CompareSettings, stop: Arc<AtomicBool>) -> Result<bool> {
    let (out, lamb_cfg, adam_cfg) = resolve(file, flags)?;
    let mode = Mode::from_flags(lamb_cfg.quiet, lamb_cfg.json);
    let top = Progress::new(mode, "", lamb_cfg.epochs);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let data = crate::loading(|| {
        run::load_data(
            lamb_cfg.data.as_deref(),
            &lamb_cfg.load,
            lamb_cfg.download,
            lamb_cfg.limit_train,
            lamb_cfg.limit_test,
        )
    })?;
    let mut results = Vec::new();
    for (tag, cfg) in [("lamb", &lamb_cfg), ("adam", &adam_cfg)] {
        // A run directory from an earlier, interrupted `lamb compare` of the same settings is
        // resumed; one that never reached its first checkpoint starts again.
        let resume = run::holds_run(&cfg.out);
        if resume {
            let ck = cfg.out.join(checkpoint::FILE);
            let c = Checkpoint::load(&ck)?;
            if c.progress.epoch >= cfg.epochs
                && c.progress.step == 0
                && cfg.out.join("weights.safetensors").exists()
            {
                top.info(&format!(
                    "[{tag}] already complete in {}",
                    cfg.out.display()
                ));
                results.push(run::RunResult {
                    end: RunEnd::Completed,
                    history: c.progress.history,
                    dir: cfg.out.clone(),
                    test: None,
                    target: None,
                });
                continue;
            }
        }
        let r = run::train(cfg, &data, resume, tag, stop.clone())?;
        if let RunEnd::Interrupted { .. } = r.end {
            top.warn(&format!(
                "Comparison interrupted; continue it with: lamb compare --out {} (plus the same \
                 --data, --epochs and --config you gave, if any)",
                out.display()
            ));
            return Ok(false);
        }
        if mode != Mode::Json {
            println!("{}", run::final_summary(&run::display_name(cfg), &r));
        }
        results.push(r);
    }
    let stats = |r: &run::RunResult| {
        RunStats::from_history(&r.history).context("a run completed without validation history")
    };
    let (lamb_name, adam_name) = (run::display_name(&lamb_cfg), run::display_name(&adam_cfg));
    let a = Side {
        name: &lamb_name,
        history: &results[0].history,
        stats: stats(&results[0])?,
        reference: REFERENCE_LAMB,
    };
    let b = Side {
        name: &adam_name,
        history: &results[1].history,
        stats: stats(&results[1])?,
        reference: REFERENCE_ADAM,
    };
    let classic = is_classic(file, &lamb_cfg);
    let describe = |c: &RunConfig| {
        format!(
            "{}: {}; run directory `{}`",
            run::display_name(c),
            c.optimizer_line(),
            c.out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    };
    let settings = vec![
        format!(
            "epochs {}, batch size {}, seed {}; data {} ({} training, {} test images)",
            lamb_cfg.epochs,
            lamb_cfg.batch_size,
            lamb_cfg.seed,
            data.source.display(),
            data.train.len(),
            data.test.len()
        ),
        describe(&lamb_cfg),
        describe(&adam_cfg),
    ];
    let md = compare_markdown(&a, &b, classic, &settings);
    write_compare_plots(&out, &a, &b)?;
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    let conclusion = crate::report::conclusion(&a, &b, classic);
    if mode == Mode::Json {
        println!(
            "{}",
            serde_json::json!({
                "event": "summary",
                "report": out.join("report.md"),
                "lamb": {"final_val_accuracy": a.stats.final_val_accuracy, "last5_val_accuracy": a.stats.last5_val_accuracy, "final_val_loss": a.stats.final_val_loss, "min_val_loss": a.stats.min_val_loss.0, "min_val_loss_epoch": a.stats.min_val_loss.1},
                "adam": {"final_val_accuracy": b.stats.final_val_accuracy, "last5_val_accuracy": b.stats.last5_val_accuracy, "final_val_loss": b.stats.final_val_loss, "min_val_loss": b.stats.min_val_loss.0, "min_val_loss_epoch": b.stats.min_val_loss.1},
                "conclusion": conclusion,
            })
        );
    } else {
        println!("\nConclusion:");
        for line in &conclusion {
            println!("- {line}");
        }
        println!("Report: {}", out.join("report.md").display());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_pair_by_default() {
        let (out, l, a) = resolve(
            &CompareFile::default(),
            &CompareSettings {
                out: Some("o".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(out, PathBuf::from("o"));
        assert_eq!(
            (l.optimizer, l.activation, l.epochs, l.batch_size),
            (OptimizerKind::Lamb, ActivationKind::Relu, 50, 100)
        );
        assert_eq!(
            (
                l.hyper.lr,
                l.hyper.beta1,
                l.hyper.beta2,
                l.hyper.epsilon,
                l.hyper.weight_decay
            ),
            (1e-3, Some(0.9), Some(0.999), Some(1e-6), 0.0)
        );
        assert_eq!(
            (a.optimizer, a.activation),
            (OptimizerKind::Adam, ActivationKind::Selu)
        );
        assert_eq!(a.hyper.epsilon, Some(1e-7));
        assert_eq!(l.out, PathBuf::from("o/lamb"));
        assert!(is_classic(&CompareFile::default(), &l));
    }

    #[test]
    fn config_file_with_side_tables_and_flag_overrides() {
        let f = CompareFile::from_toml(
            "epochs = 7\nseed = 3\n[lamb]\nlr = 0.002\n[adam]\nactivation = \"relu\"",
            "c",
        )
        .unwrap();
        let (_, l, a) = resolve(
            &f,
            &CompareSettings {
                epochs: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((l.epochs, l.seed, l.hyper.lr), (5, 3, 0.002));
        assert_eq!(a.activation, ActivationKind::Relu);
        assert!(!is_classic(&f, &l));
        // Any other hyperparameter of a side's optimizer, by its description's name.
        let f = CompareFile::from_toml(
            "[lamb]\npreset = \"timm\"\n[lamb.hyper]\ntrust_clip = true",
            "c",
        )
        .unwrap();
        let (_, l, _) = resolve(&f, &CompareSettings::default()).unwrap();
        assert_eq!(
            l.extra_hyper,
            [("trust_clip".to_string(), "true".to_string())]
        );
        assert!(
            l.optimizer_line().contains("trust_clip true"),
            "{}",
            l.optimizer_line()
        );
        let f = CompareFile::from_toml("[adam.hyper]\ntrust_clip = true", "c").unwrap();
        let e = format!(
            "{:#}",
            resolve(&f, &CompareSettings::default()).unwrap_err()
        );
        assert!(
            e.contains("adam run") && e.contains("does not apply to adam"),
            "{e}"
        );
    }

    #[test]
    fn bad_compare_configs_are_errors() {
        for (text, needle) in [
            ("epochz = 3", "epochz"),
            ("[lamb]\nepochs = 3", "top level"),
            ("[adam]\nlrr = 1.0", "lrr"),
            ("lamb = 3", "must be a table"),
            ("epochs = \"x\"", "epochs"),
        ] {
            let e = CompareFile::from_toml(text, "c").unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{text}: {e:#}");
        }
    }
}
