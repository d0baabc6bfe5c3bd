//! Run settings: what a config file (TOML) or the command-line flags may say, how the two are
//! merged (flags win), the per-optimizer defaults, validation, and the fully resolved
//! [`RunConfig`] that every run records in its directory.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::optim::Hyper;
pub use lamb_optim::OptimizerKind;

/// Parses `--optimizer` (the names of `lamb_optim`'s descriptions, listed in the help).
fn optimizer_parser() -> impl clap::builder::TypedValueParser<Value = OptimizerKind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(OptimizerKind::names())
        .try_map(|s| s.parse::<OptimizerKind>().map_err(|e| e.to_string()))
}

/// The `--preset` help: every optimizer's presets, from the descriptions.
fn preset_help() -> String {
    let each: Vec<String> = OptimizerKind::ALL
        .iter()
        .map(|k| {
            let d = k.description();
            format!("{} {}", d.name, d.preset_list())
        })
        .collect();
    format!(
        "Reference implementation to follow (the first of each is the default): {}",
        each.join("; ")
    )
}

/// Parses one `--hyper KEY=VALUE`.
fn hyper_pair(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!(
            "`{s}`: expected KEY=VALUE, e.g. nesterov=true or exclude_from_weight_decay=bias,LayerNorm"
        )),
    }
}

/// The `hyper` table of a config file: `KEY = value` with TOML values (numbers, booleans,
/// strings, arrays of strings), kept as the text `--hyper KEY=VALUE` would give.
mod hyper_table {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(v: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
        let m: BTreeMap<&str, &str> = v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        m.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
        let m = BTreeMap::<String, toml::Value>::deserialize(d)?;
        m.into_iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Array(a) => a
                        .into_iter()
                        .map(|x| match x {
                            toml::Value::String(s) => Ok(s),
                            other => Err(D::Error::custom(format!(
                                "`hyper.{k}`: list items must be strings, not {other}"
                            ))),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .join(","),
                    other => {
                        return Err(D::Error::custom(format!(
                            "`hyper.{k}` = {other}: expected a number, true/false, a string or a list of strings"
                        )))
                    }
                };
                Ok((k, text))
            })
            .collect()
    }
}

/// Shape of the learning rate over training (the peak is `lr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// `lr` throughout (after any warmup): the classic experiment.
    #[default]
    Constant,
    /// Linear warmup, then polynomial decay to 0 at the last step (the LAMB paper's recipe).
    Poly,
    /// Linear warmup, then half-cosine decay to 0 at the last step.
    Cosine,
}

impl ScheduleKind {
    /// `constant`, `poly` or `cosine`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Poly => "poly",
            Self::Cosine => "cosine",
        }
    }
}

/// The learning-rate schedule of a run, in epochs (converted to steps once the training-set
/// size is known).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleConfig {
    /// Decay shape after warmup.
    pub kind: ScheduleKind,
    /// Linear warmup length in epochs (fractions allowed; 0: none).
    pub warmup_epochs: f64,
    /// Exponent of the polynomial decay (1: linear).
    pub power: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Constant,
            warmup_epochs: 0.0,
            power: 1.0,
        }
    }
}

impl ScheduleConfig {
    /// Whether the rate depends on the total number of epochs (then `epochs` is part of what
    /// decides the numbers, and cannot change on resume).
    pub fn depends_on_length(&self) -> bool {
        self.kind != ScheduleKind::Constant
    }

    /// The library schedule for `steps_per_epoch` steps per epoch and `epochs` epochs.
    pub fn in_steps(&self, steps_per_epoch: usize, epochs: usize) -> lamb_optim::Schedule {
        let warmup_steps = (self.warmup_epochs * steps_per_epoch as f64).round() as u64;
        let total_steps = ((steps_per_epoch * epochs) as u64).max(warmup_steps + 1);
        match self.kind {
            ScheduleKind::Constant if warmup_steps == 0 => lamb_optim::Schedule::Constant,
            ScheduleKind::Constant => lamb_optim::Schedule::LinearWarmup { warmup_steps },
            ScheduleKind::Poly => lamb_optim::Schedule::PolynomialDecay {
                warmup_steps,
                total_steps,
                power: self.power,
                end_learning_rate: 0.0,
            },
            ScheduleKind::Cosine => lamb_optim::Schedule::Cosine {
                warmup_steps,
                total_steps,
                min_learning_rate: 0.0,
            },
        }
    }
}

/// Hidden-layer activation of the classic CNN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ActivationKind {
    /// ReLU (the LAMB run of the classic experiment).
    Relu,
    /// SELU (the Adam run of the classic experiment).
    Selu,
}

impl ActivationKind {
    /// `relu` or `selu`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::Selu => "selu",
        }
    }
}

impl fmt::Display for ActivationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The default model: the classic experiment's seed CNN.
pub const SEED_CNN: &str = "seed-cnn";

/// Settings as a config file or the flags give them: every key optional. File keys are the
/// flag names, with `-` or `_` (`batch-size` or `batch_size`); unknown keys are errors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Data: a directory in the official CIFAR-10 binary layout, or an image archive
    /// (train/<class>/*.jpg, test/<class>/*.jpg) [default: ../shared/data or $LAMB_DATA].
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Resize every image to HEIGHTxWIDTH (bilinear) [default: all images of one size].
    #[arg(long, value_name = "HxW")]
    pub resize: Option<String>,
    /// CIFAR-100's label set: fine (100 classes) or coarse (20) [default: fine].
    #[arg(long, value_name = "fine|coarse")]
    pub labels: Option<String>,
    /// When no data is found, fail instead of downloading CIFAR-10 into ./data (the default,
    /// as keras.datasets does on first use).
    #[arg(long, action = clap::ArgAction::SetTrue)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_download: bool,
    /// Run directory to write [default: runs/<command>-<optimizer>-<UTC time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seed for initialisation and shuffling [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of epochs [default: 50].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Training batch size [default: 100].
    #[arg(long)]
    #[serde(alias = "batch_size")]
    pub batch_size: Option<usize>,
    /// Optimizer [default: lamb].
    #[arg(long, value_parser = optimizer_parser())]
    pub optimizer: Option<OptimizerKind>,
    /// Reference implementation to follow (each optimizer's presets are listed in the help,
    /// from `lamb_optim`'s descriptions).
    #[arg(long, help = preset_help())]
    pub preset: Option<String>,
    /// Learning rate [default: the preset's; 1e-3 for lamb, adam and adamw].
    #[arg(long)]
    #[serde(alias = "learning-rate", alias = "learning_rate")]
    pub lr: Option<f64>,
    /// First-moment decay beta_1 (lamb, adam, adamw) [default: 0.9].
    #[arg(long)]
    #[serde(alias = "beta_1", alias = "beta-1")]
    pub beta1: Option<f64>,
    /// Second-moment decay beta_2 (lamb, adam, adamw) [default: 0.999].
    #[arg(long)]
    #[serde(alias = "beta_2", alias = "beta-2")]
    pub beta2: Option<f64>,
    /// Epsilon [default: the preset's; 1e-6 for lamb (tensorflow-addons), 1e-7 for adam (Keras)].
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// Weight decay rate [default: the preset's; 0 for lamb and adam, 0.01 for adamw]:
    /// decoupled for lamb (added to the direction before the trust ratio) and adamw; L2 on the
    /// gradient for adam, sgd and lars (before the trust ratio).
    #[arg(long)]
    #[serde(
        alias = "weight_decay",
        alias = "weight_decay_rate",
        alias = "weight-decay-rate"
    )]
    pub weight_decay: Option<f64>,
    /// Momentum for lars and sgd [default: the preset's: 0.9 lars, 0 sgd].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Learning-rate schedule: constant, poly (warmup + polynomial decay to 0, the LAMB
    /// paper's recipe) or cosine [default: constant].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Linear warmup in epochs, fractions allowed [default: 0].
    #[arg(long, value_name = "EPOCHS")]
    #[serde(alias = "warmup_epochs")]
    pub warmup_epochs: Option<f64>,
    /// Exponent of the poly schedule's decay [default: 1, linear].
    #[arg(long)]
    #[serde(alias = "decay_power")]
    pub decay_power: Option<f64>,
    /// Hidden-layer activation of the CNN [default: relu].
    #[arg(long, value_enum)]
    pub activation: Option<ActivationKind>,
    /// Model: seed-cnn (the classic CNN, with --activation), resnet20 (the Keras CIFAR-10
    /// example's ResNet-20 v1), or a Keras model JSON file (`model.to_json()`) [default:
    /// seed-cnn].
    #[arg(long, value_name = "NAME|FILE")]
    pub model: Option<String>,
    /// Worker threads for the engine [default: all cores]; with --workers, threads per rank.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Data-parallel ranks: N > 1 starts N processes under `mpirun` (build with
    /// `--features mpi`); rank 0 writes the run directory [default: 1, or the world size when
    /// started by `mpirun`].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Micro-batches per rank and step (gradient accumulation; the global batch is unchanged,
    /// shards need not divide evenly) [default: 1].
    #[arg(long, value_name = "K")]
    pub accumulate: Option<usize>,
    /// Developer option: train on N training images spread evenly over the split.
    #[arg(long, hide = true, value_name = "N")]
    #[serde(alias = "limit_train")]
    pub limit_train: Option<usize>,
    /// Developer option: validate on N test images spread evenly over the split.
    #[arg(long, hide = true, value_name = "N")]
    #[serde(alias = "limit_test")]
    pub limit_test: Option<usize>,
    /// Hold out this fraction of the training images (seeded, stratified by class) as the
    /// validation data; the test set is then evaluated once, at the end, and reported
    /// separately [default: none, validation on the test set as in the classic experiment].
    #[arg(long, value_name = "F")]
    #[serde(alias = "validation_split")]
    pub validation_split: Option<f64>,
    /// Stop when the validation accuracy first reaches A (checked at every validation pass:
    /// epoch ends, and every `--eval-every` steps), and
    /// record the epoch, step, images seen and seconds at that point (`target.json`).
    #[arg(long, value_name = "A")]
    #[serde(alias = "target_accuracy")]
    pub target_accuracy: Option<f64>,
    /// Also validate every STEPS training steps (counted from the start), not only at epoch
    /// ends, so that `--target-accuracy` is found within a fraction of an epoch; every pass is
    /// recorded in history.json (`evals`). The trained weights are the same with or without it.
    #[arg(long, value_name = "STEPS")]
    #[serde(alias = "eval_every")]
    pub eval_every: Option<usize>,
    /// Training-batch augmentation, Keras-style: `crop=N` (pad by N with zeros, crop back at a
    /// random offset), `flip` (horizontal), both as `crop=4,flip`, or `none` [default: none].
    /// Deterministic from the seed, the epoch and the image.
    #[arg(long, value_name = "SPEC")]
    pub augment: Option<String>,
    /// Per-channel standardization with the training images' mean and standard deviation
    /// (stored in the run's `input.json`) instead of plain 1/255 scaling [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub standardize: Option<bool>,
    /// Start from these weights instead of the seeded initialisation: a safetensors file with
    /// the model's Keras names (ours, or exported from Keras; BatchNormalization's moving
    /// statistics included). Every rank reads it.
    #[arg(long, value_name = "FILE")]
    #[serde(alias = "initial_weights")]
    pub initial_weights: Option<PathBuf>,
    /// Print only the final summary.
    #[arg(long, short = 'q', action = clap::ArgAction::SetTrue)]
    #[serde(default, skip_serializing_if = "is_false")]
    #[arg(default_value_t = false)]
    pub quiet: bool,
    /// Print one JSON object per epoch on stdout (for scripts); implies no progress bar.
    #[arg(long, action = clap::ArgAction::SetTrue)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub json: bool,
    /// Any other hyperparameter of the optimizer's description, by its tensorflow-addons name
    /// (repeatable): e.g. nesterov=true, trust_coefficient=0.02, max_grad_norm=1,
    /// exclude_from_weight_decay=bias,LayerNorm, step_memory=lean. In a config file: a
    /// `[hyper]` table. A key that does not apply to the optimizer is an error.
    #[arg(long, value_name = "KEY=VALUE", value_parser = hyper_pair)]
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hyper_table")]
    pub hyper: Vec<(String, String)>,
}

/// The largest config or grid file read (real ones are a few hundred bytes).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a TOML config or grid file: a regular file (not a FIFO or device) of at most
/// [`MAX_CONFIG_BYTES`], in UTF-8.
pub fn read_config_text(path: &Path) -> Result<String> {
    let bytes = lamb_data::read_capped(path, MAX_CONFIG_BYTES).context("reading a config file")?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "config file {} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// A TOML error as one short message: the place (line, column), what is wrong, and at most
/// 80 characters of the line around it (a 10 MB line is not echoed).
pub fn toml_error(e: &toml::de::Error, text: &str, origin: &str) -> anyhow::Error {
    let Some(span) = e.span() else {
        return anyhow::anyhow!("invalid config file {origin}: {}", e.message());
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..start].matches('\n').count() + 1;
    let col = text[line_start..start].chars().count() + 1;
    let line = &text[line_start..line_end];
    let excerpt: String = if line.chars().count() <= 80 {
        line.to_string()
    } else {
        let skip = col.saturating_sub(40);
        let cut: String = line.chars().skip(skip).take(80).collect();
        format!("{}{cut}...", if skip > 0 { "..." } else { "" })
    };
    anyhow::anyhow!(
        "invalid config file {origin}, line {line_no}, column {col}: {}\n  | {excerpt}",
        e.message().trim_end()
    )
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Whether two `--hyper` keys name the same hyperparameter (`-` or `_`, any case).
fn same_key(a: &str, b: &str) -> bool {
    a.replace('-', "_")
        .eq_ignore_ascii_case(&b.replace('-', "_"))
}

impl Settings {
    /// Parses a TOML config file's text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| toml_error(&e, text, origin))
    }

    /// Reads and parses a TOML config file (a regular file of at most [`MAX_CONFIG_BYTES`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_config_text(path)?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// `self` with every key that `over` sets replaced by `over`'s value (flags over file).
    pub fn overridden_by(&self, over: &Settings) -> Settings {
        let mut hyper = self.hyper.clone();
        for (k, v) in &over.hyper {
            match hyper.iter_mut().find(|(n, _)| same_key(n, k)) {
                Some(slot) => *slot = (k.clone(), v.clone()),
                None => hyper.push((k.clone(), v.clone())),
            }
        }
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: over.$f.clone().or_else(|| self.$f.clone()),)*
                quiet: over.quiet || self.quiet, json: over.json || self.json,
                no_download: over.no_download || self.no_download, hyper } };
        }
        pick!(
            data,
            resize,
            labels,
            out,
            seed,
            epochs,
            batch_size,
            optimizer,
            preset,
            lr,
            beta1,
            beta2,
            epsilon,
            weight_decay,
            momentum,
            schedule,
            warmup_epochs,
            decay_power,
            activation,
            model,
            threads,
            workers,
            accumulate,
            limit_train,
            limit_test,
            validation_split,
            target_accuracy,
            eval_every,
            augment,
            standardize,
            initial_weights
        )
    }

    /// Applies defaults and checks ranges; `command` names the default run directory.
    pub fn resolve(&self, command: &str) -> Result<RunConfig> {
        let optimizer = self.optimizer.unwrap_or(OptimizerKind::Lamb);
        let extra_hyper = crate::optim::normalise_extra(&self.hyper)?;
        let given = crate::optim::Given {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            extra: extra_hyper.clone(),
        };
        let mut first = RunConfig {
            data: None,
            load: lamb_data::LoadOptions::default(),
            download: false,
            out: PathBuf::new(),
            seed: 0,
            epochs: 1,
            batch_size: 1,
            optimizer,
            preset: None,
            hyper: Hyper {
                lr: self.lr.unwrap_or(1.0),
                beta1: self.beta1,
                beta2: self.beta2,
                epsilon: self.epsilon,
                weight_decay: self.weight_decay.unwrap_or(0.0),
                momentum: self.momentum,
            },
            extra_hyper: Vec::new(),
            schedule: ScheduleConfig::default(),
            activation: ActivationKind::Relu,
            model: SEED_CNN.into(),
            threads: None,
            workers: 1,
            accumulate: 1,
            limit_train: None,
            limit_test: None,
            validation_split: None,
            target_accuracy: None,
            eval_every: None,
            augment: lamb_data::Augment::default(),
            standardize: false,
            initial_weights: None,
            quiet: false,
            json: false,
        };
        // Our own checks first, then the library's (messages name the flags).
        first.validate()?;
        first.hyper = crate::optim::effective(optimizer, self.preset.as_deref(), &given)?;
        let hyper = first.hyper;
        let out = match &self.out {
            Some(o) => o.clone(),
            None => PathBuf::from("runs").join(format!(
                "{command}-{}-{}",
                optimizer.as_str(),
                utc_stamp()
            )),
        };
        let load = lamb_data::LoadOptions {
            resize: self
                .resize
                .as_deref()
                .map(|r| {
                    r.parse()
                        .map_err(|e| anyhow::anyhow!("`resize` = {r:?}: {e}"))
                })
                .transpose()?,
            cifar100_labels: self
                .labels
                .as_deref()
                .map(|l| {
                    l.parse()
                        .map_err(|e| anyhow::anyhow!("`labels` = {l:?}: {e}"))
                })
                .transpose()?
                .unwrap_or_default(),
        };
        let cfg = RunConfig {
            data: self.data.clone(),
            load,
            download: !self.no_download,
            out,
            seed: self.seed.unwrap_or(42),
            epochs: self.epochs.unwrap_or(50),
            batch_size: self.batch_size.unwrap_or(100),
            optimizer,
            preset: self.preset.clone(),
            hyper,
            extra_hyper,
            schedule: ScheduleConfig {
                kind: self.schedule.unwrap_or_default(),
                warmup_epochs: self.warmup_epochs.unwrap_or(0.0),
                power: self.decay_power.unwrap_or(1.0),
            },
            activation: self.activation.unwrap_or(ActivationKind::Relu),
            // A model file is recorded by its absolute path, so that `--resume` works from
            // any directory.
            model: match &self.model {
                Some(m) if Path::new(m).is_file() => std::fs::canonicalize(m)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| m.clone()),
                Some(m) => m.clone(),
                None => SEED_CNN.into(),
            },
            threads: self.threads,
            workers: self.workers.unwrap_or(1),
            accumulate: self.accumulate.unwrap_or(1),
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            validation_split: self.validation_split,
            target_accuracy: self.target_accuracy,
            eval_every: self.eval_every,
            augment: self
                .augment
                .as_deref()
                .map(|a| {
                    a.parse()
                        .map_err(|e| anyhow::anyhow!("`augment` = {a:?}: {e}"))
                })
                .transpose()?
                .unwrap_or_default(),
            standardize: self.standardize.unwrap_or(false),
            // Recorded absolute, so that the run directory means the same from anywhere.
            initial_weights: self
                .initial_weights
                .as_ref()
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
            quiet: self.quiet,
            json: self.json,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A fully resolved run configuration (what `config.toml` in a run directory records).
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// Data location as given (`None`: the default search).
    pub data: Option<PathBuf>,
    /// How the data is read (`--resize`, `--labels`).
    pub load: lamb_data::LoadOptions,
    /// Whether a missing dataset may be downloaded (not `--no-download`).
    pub download: bool,
    /// Run directory.
    pub out: PathBuf,
    /// Seed for initialisation and shuffling.
    pub seed: u64,
    /// Number of epochs.
    pub epochs: usize,
    /// Training batch size (also used for validation).
    pub batch_size: usize,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Optimizer variant preset, if any.
    pub preset: Option<String>,
    /// Optimizer hyperparameters of the dedicated flags (effective values).
    pub hyper: Hyper,
    /// Other hyperparameters given with `--hyper` (normalised names, values as given).
    pub extra_hyper: Vec<(String, String)>,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Hidden activation.
    pub activation: ActivationKind,
    /// Model: `seed-cnn`, `resnet20` or a Keras model JSON file.
    pub model: String,
    /// Engine threads (`None`: all cores); per rank with several workers.
    pub threads: Option<usize>,
    /// Data-parallel ranks (1: one process).
    pub workers: usize,
    /// Micro-batches per rank and step (gradient accumulation; 1: none).
    pub accumulate: usize,
    /// Use only N training images (spread evenly).
    pub limit_train: Option<usize>,
    /// Use only N test images (spread evenly).
    pub limit_test: Option<usize>,
    /// Fraction of the training images held out as validation data (`None`: validate on the
    /// test set).
    pub validation_split: Option<f64>,
    /// Stop when the validation accuracy first reaches this (`None`: run every epoch).
    pub target_accuracy: Option<f64>,
    /// Validate every this many steps too (`None`: at epoch ends only).
    pub eval_every: Option<usize>,
    /// Training-batch augmentation (`--augment`).
    pub augment: lamb_data::Augment,
    /// Per-channel standardization (`--standardize`).
    pub standardize: bool,
    /// Weights the run starts from (`--initial-weights`; `None`: seeded initialisation).
    pub initial_weights: Option<PathBuf>,
    /// Quiet output.
    pub quiet: bool,
    /// JSON-lines output.
    pub json: bool,
}

impl RunConfig {
    /// Checks that `--initial-weights` names a file (a fresh run reads it before anything is
    /// created; a resumed run takes its weights from the checkpoint and never reads it).
    pub fn check_initial_weights(&self) -> Result<()> {
        if let Some(p) = &self.initial_weights {
            if !p.is_file() {
                bail!(
                    "`initial-weights` = {}: no such file (expected a safetensors file with the \
                     model's Keras names)",
                    p.display()
                );
            }
        }
        Ok(())
    }

    /// Checks the ranges that do not depend on the optimizer library.
    pub fn validate(&self) -> Result<()> {
        if self.model != SEED_CNN {
            // The whole description is checked (and built once) before any work starts.
            crate::models::build(&self.model, self.activation, 0)?;
        }
        if self.epochs == 0 || self.epochs > 100_000 {
            bail!("`epochs` = {}: must be between 1 and 100000", self.epochs);
        }
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            bail!(
                "`batch-size` = {}: must be between 1 and 1000000",
                self.batch_size
            );
        }
        if let Some(t) = self.threads {
            if t == 0 || t > 1024 {
                bail!("`threads` = {t}: must be between 1 and 1024");
            }
        }
        if self.workers == 0 || self.workers > 1024 {
            bail!("`workers` = {}: must be between 1 and 1024", self.workers);
        }
        if self.accumulate == 0 || self.accumulate > 100_000 {
            bail!(
                "`accumulate` = {}: must be between 1 and 100000",
                self.accumulate
            );
        }
        // Shards and micro-batches need not divide the batch evenly (sizes differ by at most
        // one image and each is weighted by its size), but each needs at least one image.
        if self.workers * self.accumulate > self.batch_size {
            bail!(
                "`batch-size` = {} is smaller than `workers` x `accumulate` = {} x {} = {}: each \
                 rank's micro-batch needs at least one image; raise --batch-size or lower \
                 --workers/--accumulate (the batch need not divide evenly)",
                self.batch_size,
                self.workers,
                self.accumulate,
                self.workers * self.accumulate
            );
        }
        for (k, v) in [
            ("limit-train", self.limit_train),
            ("limit-test", self.limit_test),
            ("eval-every", self.eval_every),
        ] {
            if v == Some(0) {
                bail!("`{k}` = 0: must be at least 1");
            }
        }
        if let Some(f) = self.validation_split {
            if !(f > 0.0 && f < 1.0) {
                bail!("`validation-split` = {f}: must be a fraction in (0, 1), e.g. 0.1");
            }
        }
        if let Some(a) = self.target_accuracy {
            if !(a > 0.0 && a <= 1.0) {
                bail!("`target-accuracy` = {a}: must be an accuracy in (0, 1], e.g. 0.6");
            }
        }
        if self.seed > i64::MAX as u64 {
            bail!(
                "`seed` = {}: must be between 0 and {} (config.toml records it as a TOML \
                 integer, which is 64-bit signed)",
                self.seed,
                i64::MAX
            );
        }
        // The optimizer's ranges are its description's (checked when it is built); a run
        // also needs a learning rate above 0.
        let h = &self.hyper;
        if !(h.lr.is_finite() && h.lr > 0.0) {
            bail!("`lr` = {:e}: must be a finite number > 0", h.lr);
        }
        if !((h.lr as f32).is_normal() && h.lr >= f64::from(f32::MIN_POSITIVE)) {
            bail!(
                "`lr` = {:e}: outside the range of the optimizers' f32 arithmetic (it would be {}); \
                 must be between {:e} and {:e}",
                h.lr,
                h.lr as f32,
                f32::MIN_POSITIVE,
                f32::MAX
            );
        }
        let sc = &self.schedule;
        if !(sc.warmup_epochs.is_finite() && sc.warmup_epochs >= 0.0) {
            bail!(
                "`warmup-epochs` = {}: must be a finite number >= 0",
                sc.warmup_epochs
            );
        }
        if sc.warmup_epochs > self.epochs as f64 {
            bail!(
                "`warmup-epochs` = {}: longer than the run (`epochs` = {}): the learning rate \
                 would never reach `lr`; must be at most `epochs`",
                sc.warmup_epochs,
                self.epochs
            );
        }
        if sc.depends_on_length() && sc.warmup_epochs >= self.epochs as f64 {
            bail!(
                "`warmup-epochs` = {}: must be less than `epochs` ({}) with the {} schedule",
                sc.warmup_epochs,
                self.epochs,
                sc.kind.as_str()
            );
        }
        if !(sc.power.is_finite() && sc.power > 0.0 && sc.power <= 100.0) {
            bail!("`decay-power` = {}: must be in (0, 100]", sc.power);
        }
        if sc.kind != ScheduleKind::Poly && sc.power != 1.0 {
            bail!(
                "`decay-power` = {}: applies only to `--schedule poly` (the schedule is {})",
                sc.power,
                sc.kind.as_str()
            );
        }
        if self.quiet && self.json {
            bail!("`quiet` and `json` exclude each other: choose one");
        }
        Ok(())
    }

    /// The config as [`Settings`] with every applicable key set (reloadable as a config file).
    pub fn to_settings(&self) -> Settings {
        Settings {
            data: self.data.clone(),
            resize: self.load.resize.map(|r| r.to_string()),
            labels: (self.load.cifar100_labels != lamb_data::Cifar100Labels::default())
                .then(|| self.load.cifar100_labels.as_str().to_string()),
            no_download: false,
            out: Some(self.out.clone()),
            seed: Some(self.seed),
            epochs: Some(self.epochs),
            batch_size: Some(self.batch_size),
            optimizer: Some(self.optimizer),
            preset: self.preset.clone(),
            lr: Some(self.hyper.lr),
            beta1: self.hyper.beta1,
            beta2: self.hyper.beta2,
            epsilon: self.hyper.epsilon,
            weight_decay: Some(self.hyper.weight_decay),
            momentum: self.hyper.momentum,
            schedule: Some(self.schedule.kind),
            warmup_epochs: Some(self.schedule.warmup_epochs),
            decay_power: (self.schedule.kind == ScheduleKind::Poly).then_some(self.schedule.power),
            activation: Some(self.activation),
            // Unset for the seed CNN, so that keys of earlier runs stay as they were.
            model: (self.model != SEED_CNN).then(|| self.model.clone()),
            threads: self.threads,
            workers: Some(self.workers),
            accumulate: Some(self.accumulate),
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            validation_split: self.validation_split,
            target_accuracy: self.target_accuracy,
            eval_every: self.eval_every,
            augment: self.augment.is_active().then(|| self.augment.to_string()),
            standardize: self.standardize.then_some(true),
            initial_weights: self.initial_weights.clone(),
            quiet: false,
            json: false,
            hyper: self.extra_hyper.clone(),
        }
    }

    /// What the run's optimizer is given (effective values of the dedicated flags, extras).
    fn given(&self) -> crate::optim::Given {
        crate::optim::given_of(&self.hyper, &self.extra_hyper)
    }

    /// Builds the run's optimizer for `train_len` training images (which, with the batch size
    /// and epochs, turns the schedule's epochs into steps).
    pub fn build_optimizer(&self, train_len: usize) -> Result<Box<dyn lamb_optim::Optimizer>> {
        let steps_per_epoch = train_len.div_ceil(self.batch_size).max(1);
        let schedule = self.schedule.in_steps(steps_per_epoch, self.epochs);
        crate::optim::build(
            self.optimizer,
            self.preset.as_deref(),
            &self.given(),
            schedule,
        )
    }

    /// The optimizer and every effective hyperparameter, in one line for reports.
    pub fn optimizer_line(&self) -> String {
        crate::optim::settings_line(self.optimizer, self.preset.as_deref(), &self.given())
    }

    /// TOML text of [`RunConfig::to_settings`], with a header comment.
    pub fn to_toml(&self) -> Result<String> {
        let body = toml::to_string(&self.to_settings()).context("serialising the config")?;
        Ok(format!(
            "# Full configuration of this run (reload with `lamb train --config <this file>`).\n{body}"
        ))
    }

    /// The settings that decide the numbers a run produces (everything but output location and
    /// verbosity); two runs with equal keys train identically.
    pub fn training_key(&self) -> String {
        let mut s = self.to_settings();
        s.out = None;
        s.data = None;
        if !self.schedule.depends_on_length() {
            s.epochs = None;
        }
        if self.schedule == ScheduleConfig::default() {
            // Keys of runs without a schedule stay as they were before schedules existed.
            (s.schedule, s.warmup_epochs) = (None, None);
        }
        s.threads = None;
        s.workers = None;
        s.accumulate = None;
        toml::to_string(&s).unwrap_or_default()
    }
}

/// `YYYYMMDD-HHMMSS` in UTC, for default run directory names.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_accept_dash_and_underscore() {
        let a =
            Settings::from_toml("batch-size = 50\nweight_decay = 0.01\nlr = 0.002", "t").unwrap();
        assert_eq!(a.batch_size, Some(50));
        assert_eq!(a.weight_decay, Some(0.01));
        assert_eq!(a.lr, Some(0.002));
        let b = Settings::from_toml("batch_size = 7\nbeta_1 = 0.8", "t").unwrap();
        assert_eq!(b.batch_size, Some(7));
        assert_eq!(b.beta1, Some(0.8));
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = Settings::from_toml("epochs = 3\nlearnin_rate = 0.1", "cfg.toml").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("learnin_rate"), "{msg}");
        assert!(msg.contains("cfg.toml"), "{msg}");
    }

    #[test]
    fn wrong_type_is_an_error_naming_the_key() {
        let e = Settings::from_toml("epochs = \"five\"", "cfg.toml").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("epochs"), "{msg}");
        let e = Settings::from_toml("optimizer = \"rmsprop\"", "cfg.toml").unwrap_err();
        assert!(format!("{e:#}").contains("rmsprop"));
    }

    #[test]
    fn flags_override_file_values() {
        let file = Settings::from_toml("epochs = 3\nseed = 9\nlr = 0.5", "t").unwrap();
        let flags = Settings {
            epochs: Some(7),
            ..Default::default()
        };
        let m = file.overridden_by(&flags);
        assert_eq!(m.epochs, Some(7));
        assert_eq!(m.seed, Some(9));
        assert_eq!(m.lr, Some(0.5));
    }

    #[test]
    fn defaults_follow_the_optimizer() {
        let lamb = Settings::default().resolve("train").unwrap();
        assert_eq!(lamb.optimizer, OptimizerKind::Lamb);
        assert_eq!(lamb.hyper.epsilon, Some(1e-6));
        assert_eq!((lamb.epochs, lamb.batch_size, lamb.seed), (50, 100, 42));
        let adam = Settings {
            optimizer: Some(OptimizerKind::Adam),
            ..Default::default()
        }
        .resolve("train")
        .unwrap();
        assert_eq!(adam.hyper.epsilon, Some(1e-7));
    }

    #[test]
    fn out_of_range_and_inapplicable_values_are_errors() {
        for (toml, needle) in [
            ("epochs = 0", "epochs"),
            ("batch-size = 0", "batch-size"),
            ("lr = -1.0", "lr"),
            ("beta1 = 1.0", "beta1"),
            ("beta2 = -0.1", "beta2"),
            ("epsilon = -1e-9", "epsilon"),
            ("weight-decay = -0.1", "weight-decay"),
            ("preset = \"nonsense\"", "preset"),
        ] {
            let s = Settings::from_toml(toml, "t").unwrap();
            let e = s.resolve("train").unwrap_err().to_string();
            assert!(e.contains(needle), "{toml}: {e}");
        }
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let cfg = Settings {
            optimizer: Some(OptimizerKind::Adam),
            activation: Some(ActivationKind::Selu),
            limit_train: Some(100),
            out: Some("x".into()),
            ..Default::default()
        }
        .resolve("train")
        .unwrap();
        let text = cfg.to_toml().unwrap();
        let back = Settings::from_toml(&text, "t")
            .unwrap()
            .resolve("train")
            .unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn workers_and_accumulate_are_checked_recorded_and_not_in_the_key() {
        for (toml, needle) in [
            ("workers = 0", "workers"),
            ("workers = 5000", "workers"),
            ("accumulate = 0", "accumulate"),
            ("batch-size = 10\nworkers = 4\naccumulate = 3", "4 x 3 = 12"),
        ] {
            let s = Settings::from_toml(toml, "t").unwrap();
            let e = s.resolve("train").unwrap_err().to_string();
            assert!(e.contains(needle), "{toml}: {e}");
        }
        let one = Settings::default().resolve("train").unwrap();
        assert_eq!((one.workers, one.accumulate), (1, 1));
        let s = Settings::from_toml("batch-size = 10\nworkers = 3\naccumulate = 3", "t").unwrap();
        let par = s.resolve("train").unwrap();
        assert_eq!((par.workers, par.accumulate), (3, 3));
        let text = par.to_toml().unwrap();
        assert!(text.contains("workers = 3") && text.contains("accumulate = 3"));
        let mut seq = par.clone();
        (seq.workers, seq.accumulate) = (1, 1);
        assert_eq!(seq.training_key(), par.training_key());
    }

    #[test]
    fn schedules_turn_epochs_into_steps() {
        let poly = ScheduleConfig {
            kind: ScheduleKind::Poly,
            warmup_epochs: 1.5,
            power: 2.0,
        };
        assert_eq!(
            poly.in_steps(10, 6),
            lamb_optim::Schedule::PolynomialDecay {
                warmup_steps: 15,
                total_steps: 60,
                power: 2.0,
                end_learning_rate: 0.0,
            }
        );
        let warm = ScheduleConfig {
            warmup_epochs: 0.5,
            ..Default::default()
        };
        assert_eq!(
            warm.in_steps(10, 6),
            lamb_optim::Schedule::LinearWarmup { warmup_steps: 5 }
        );
        assert_eq!(
            ScheduleConfig::default().in_steps(10, 6),
            lamb_optim::Schedule::Constant
        );
    }

    #[test]
    fn schedule_flags_are_checked_and_decaying_ones_key_the_epochs() {
        let base = || Settings {
            schedule: Some(ScheduleKind::Poly),
            epochs: Some(4),
            ..Default::default()
        };
        let cfg = base().resolve("train").unwrap();
        assert_eq!(cfg.schedule.power, 1.0);
        let mut longer = cfg.clone();
        longer.epochs = 5;
        assert_ne!(cfg.training_key(), longer.training_key());
        let constant = Settings::default().resolve("train").unwrap();
        let mut c5 = constant.clone();
        c5.epochs = 5;
        assert_eq!(constant.training_key(), c5.training_key());
        assert!(!constant.training_key().contains("schedule"));
        for (s, key) in [
            (
                Settings {
                    warmup_epochs: Some(4.0),
                    ..base()
                },
                "warmup-epochs",
            ),
            (
                Settings {
                    warmup_epochs: Some(f64::NAN),
                    ..base()
                },
                "warmup-epochs",
            ),
            (
                Settings {
                    decay_power: Some(0.0),
                    ..base()
                },
                "decay-power",
            ),
            (
                Settings {
                    schedule: Some(ScheduleKind::Cosine),
                    decay_power: Some(2.0),
                    ..base()
                },
                "decay-power",
            ),
        ] {
            let e = s.resolve("train").unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn hyper_table_and_flags_reach_the_optimizer_and_round_trip() {
        let file = Settings::from_toml(
            "optimizer = \"lars\"\nmomentum = 0.9\n[hyper]\nnesterov = true\n\
             trust_coefficient = 0.02\nexclude_from_weight_decay = [\"bias\", \"norm\"]\n",
            "t",
        )
        .unwrap();
        let flags = Settings {
            hyper: vec![("trust-coefficient".into(), "0.05".into())],
            ..Default::default()
        };
        let cfg = file.overridden_by(&flags).resolve("train").unwrap();
        let pairs: Vec<(&str, &str)> = cfg
            .extra_hyper
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("exclude_from_weight_decay", "bias,norm"),
                ("nesterov", "true"),
                ("trust_coefficient", "0.05")
            ]
        );
        let line = cfg.optimizer_line();
        assert!(
            line.starts_with("lars: learning_rate 1, momentum 0.9")
                && line.contains("nesterov true")
                && line.contains("trust_coefficient 0.05")
                && line.contains("exclude_from_weight_decay [bias, norm]"),
            "{line}"
        );
        assert_eq!(cfg.build_optimizer(100).unwrap().name(), "lars");
        let back = Settings::from_toml(&cfg.to_toml().unwrap(), "t")
            .unwrap()
            .resolve("train")
            .unwrap();
        assert_eq!(back, cfg);
        let plain = Settings::default().resolve("train").unwrap();
        assert!(!plain.training_key().contains("hyper"));
        assert_ne!(cfg.training_key(), {
            let mut c = cfg.clone();
            c.extra_hyper.pop();
            c.training_key()
        });
        for (toml, needle) in [
            ("[hyper]\nnesterov = true", "does not apply to lamb"),
            ("[hyper]\nnesterovv = true", "nesterovv"),
            ("[hyper]\nlearning_rate = 0.1", "--lr"),
            ("[hyper]\nweight_decay_rate = 0.1", "--weight-decay"),
            ("[hyper]\ntrust_clip = 3", "true or false"),
            ("[hyper]\nmax_grad_norm = -1", "max_grad_norm"),
        ] {
            let e = Settings::from_toml(toml, "t")
                .unwrap()
                .resolve("train")
                .unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{toml}: {e:#}");
        }
        assert!(Settings::from_toml("hyper = 3", "t").is_err());
        assert!(Settings::from_toml("[hyper]\nx = { a = 1 }", "t").is_err());
        assert!(hyper_pair("nesterov").is_err());
        assert_eq!(
            hyper_pair(" nesterov = true").unwrap(),
            ("nesterov".to_string(), "true".to_string())
        );
    }

    #[test]
    fn every_optimizer_and_preset_spelling_resolves() {
        for &kind in OptimizerKind::ALL {
            let d = kind.description();
            for p in d.presets {
                for name in std::iter::once(&p.name).chain(p.aliases) {
                    let s = Settings {
                        optimizer: Some(kind),
                        preset: Some(name.to_string()),
                        ..Default::default()
                    };
                    let cfg = s.resolve("train").unwrap();
                    assert_eq!(cfg.build_optimizer(10).unwrap().name(), kind.as_str());
                }
            }
        }
        let e = Settings::from_toml("optimizer = \"adamw\"\npreset = \"keras\"", "t")
            .unwrap()
            .resolve("train")
            .unwrap_err()
            .to_string();
        assert!(e.contains("adamw: one of pytorch"), "{e}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
