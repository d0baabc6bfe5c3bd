//! What a sweep runs: the grid (batch sizes x optimizers x learning-rate multipliers), the
//! schedule every run shares, the built-in presets, and the expansion into one plan per run.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{ActivationKind, OptimizerKind, ScheduleKind};

/// How the centre of each optimizer's learning-rate grid moves with the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// `base_lr * sqrt(batch / base_batch)` (the LAMB paper's rule).
    Sqrt,
    /// `base_lr * batch / base_batch` (Goyal et al.'s rule for SGD).
    Linear,
    /// `base_lr` at every batch size.
    None,
}

impl Scaling {
    /// The learning rate at `batch` of an optimizer whose rate at `base_batch` is `base_lr`.
    pub fn centre(self, base_lr: f64, batch: usize, base_batch: usize) -> f64 {
        let r = batch as f64 / base_batch as f64;
        base_lr
            * match self {
                Scaling::Sqrt => r.sqrt(),
                Scaling::Linear => r,
                Scaling::None => 1.0,
            }
    }
}

/// Reads a grid file (TOML, at most the config size) of type `T` and checks it with `validate`;
/// `what` names it in errors ("sweep file").
pub(super) fn read_grid<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    validate: impl Fn(&T) -> Result<()>,
) -> Result<T> {
    let text = crate::config::read_config_text(path)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    let spec: T = toml::from_str(&text)
        .map_err(|e| crate::config::toml_error(&e, &text, &path.display().to_string()))
        .with_context(|| format!("invalid {what} {}", path.display()))?;
    validate(&spec).with_context(|| format!("invalid {what} {}", path.display()))?;
    Ok(spec)
}

/// One optimizer of the grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OptimizerGrid {
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Its reference-implementation preset (`None`: the optimizer's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Learning rate at `base-batch`, the centre of the grid there.
    pub base_lr: f64,
    /// Weight decay (`None`: the preset's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Momentum for LARS and SGD (`None`: the preset's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// Nesterov momentum for SGD (`None`: the preset's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
}

impl OptimizerGrid {
    /// Short label used in run names and tables (`lamb`, `lars-optax`).
    pub fn label(&self) -> String {
        let mut l = match &self.preset {
            Some(p) => format!("{}-{p}", self.optimizer.as_str()),
            None => self.optimizer.as_str().to_string(),
        };
        if self.nesterov == Some(true) {
            l.push_str("-nesterov");
        }
        l
    }

    /// What `lamb train` is given for this optimizer (to check it against its description).
    pub fn given(&self) -> crate::optim::Given {
        crate::optim::Given {
            lr: Some(self.base_lr),
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            extra: self
                .nesterov
                .map(|n| vec![("nesterov".to_string(), n.to_string())])
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Appends this optimizer's `lamb train` flags other than `--optimizer` and `--lr`.
    pub fn push_args(&self, a: &mut Vec<String>) {
        if let Some(p) = &self.preset {
            a.extend(["--preset".into(), p.clone()]);
        }
        if let Some(w) = self.weight_decay {
            a.extend(["--weight-decay".into(), format!("{w}")]);
        }
        if let Some(m) = self.momentum {
            a.extend(["--momentum".into(), format!("{m}")]);
        }
        if let Some(n) = self.nesterov {
            a.extend(["--hyper".into(), format!("nesterov={n}")]);
        }
    }
}

/// A whole sweep; the TOML form of `lamb sweep --config` (keys in kebab-case).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SweepSpec {
    /// Global batch sizes.
    pub batch_sizes: Vec<usize>,
    /// Batch size at which each optimizer's `base-lr` applies.
    pub base_batch: usize,
    /// How the grid's centre moves with the batch size.
    pub scaling: Scaling,
    /// Multipliers of the scaled learning rate: the grid at each batch size.
    pub lr_multipliers: Vec<f64>,
    /// Epochs per run (the fixed budget: larger batches take fewer steps).
    pub epochs: usize,
    /// Learning-rate schedule of every run.
    pub schedule: ScheduleKind,
    /// Linear warmup in epochs.
    pub warmup_epochs: f64,
    /// Exponent of the poly schedule's decay.
    pub decay_power: f64,
    /// Seed of every run (initialisation and shuffling).
    pub seed: u64,
    /// Hidden activation of the CNN.
    pub activation: ActivationKind,
    /// The model of every run (`seed-cnn`, `resnet20` or a Keras model JSON file); `None`: the
    /// seed CNN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Use only this many training images (spread evenly over the split); `None`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images: Option<usize>,
    /// Validate on only this many test images; `None`: all 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_images: Option<usize>,
    /// The optimizers.
    pub optimizers: Vec<OptimizerGrid>,
}

/// Built-in sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// About 10 minutes on a 2-core machine: 5 optimizers x batch 100/1000/5000 x 4 learning
    /// rates, 6 epochs on the full data (60 runs).
    Small,
    /// The full grid for bigger machines: 5 optimizers x 7 batch sizes x 5 learning rates,
    /// 30 epochs (175 runs; about 15 h on 2 cores, see `--dry-run`).
    Full,
}

fn family(base_batch: usize) -> Vec<OptimizerGrid> {
    let g = |optimizer, preset: Option<&str>, base_lr, weight_decay, momentum| OptimizerGrid {
        optimizer,
        preset: preset.map(str::to_string),
        base_lr,
        weight_decay,
        momentum,
        nesterov: None,
    };
    debug_assert_eq!(base_batch, 100);
    // Centres at batch 100 chosen after a first small sweep (2026-12-01) whose grid, centred at
    // half these rates for the adaptive optimizers, had its best rates at its upper edge.
    vec![
        g(OptimizerKind::Lamb, None, 4e-3, None, None),
        // optax LARS adapts every tensor (timm's adapts only decayed ones, i.e. none at wd 0).
        g(OptimizerKind::Lars, Some("optax"), 1.0, None, Some(0.9)),
        g(OptimizerKind::Adam, None, 2e-3, None, None),
        g(OptimizerKind::Adamw, None, 2e-3, Some(0.01), None),
        g(OptimizerKind::Sgd, None, 0.02, None, Some(0.9)),
    ]
}

impl Preset {
    /// The preset's grid.
    pub fn spec(self) -> SweepSpec {
        let base = SweepSpec {
            batch_sizes: vec![100, 1000, 5000],
            base_batch: 100,
            scaling: Scaling::Sqrt,
            lr_multipliers: vec![0.5, 1.0, 2.0, 4.0],
            epochs: 6,
            schedule: ScheduleKind::Poly,
            warmup_epochs: 1.0,
            decay_power: 1.0,
            seed: 42,
            activation: ActivationKind::Relu,
            model: None,
            train_images: None,
            test_images: None,
            optimizers: family(100),
        };
        match self {
            Preset::Small => base,
            Preset::Full => SweepSpec {
                batch_sizes: vec![100, 250, 500, 1000, 2000, 5000, 10000],
                lr_multipliers: vec![0.25, 0.5, 1.0, 2.0, 4.0],
                epochs: 30,
                warmup_epochs: 3.0,
                ..base
            },
        }
    }

    /// `small` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Small => "small",
            Preset::Full => "full",
        }
    }
}

/// One run of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct RunPlan {
    /// Directory name under `<sweep>/runs/` (`lamb-b1000-lr6.325e-3`).
    pub id: String,
    /// Index of the optimizer in [`SweepSpec::optimizers`].
    pub opt: usize,
    /// Global batch size.
    pub batch: usize,
    /// Index of the multiplier in [`SweepSpec::lr_multipliers`].
    pub mult: usize,
    /// Peak learning rate.
    pub lr: f64,
}

/// The most runs one sweep holds (the full preset has 175).
pub const MAX_RUNS: usize = 10_000;

impl SweepSpec {
    /// Reads a sweep file (TOML).
    pub fn from_file(path: &Path) -> Result<Self> {
        read_grid(path, "sweep file", SweepSpec::validate)
    }

    /// The TOML text of this spec.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("serialising the sweep")
    }

    /// Range checks of the grid itself (each run's settings are checked again by `train`).
    pub fn validate(&self) -> Result<()> {
        if self.batch_sizes.is_empty()
            || self.optimizers.is_empty()
            || self.lr_multipliers.is_empty()
        {
            bail!("`batch-sizes`, `optimizers` and `lr-multipliers` must each list at least one value");
        }
        if let Some(b) = self.batch_sizes.iter().find(|&&b| b == 0 || b > 1_000_000) {
            bail!("`batch-sizes` holds {b}: each must be between 1 and 1000000");
        }
        if self.base_batch == 0 {
            bail!("`base-batch` = 0: must be at least 1");
        }
        if let Some(m) = self
            .lr_multipliers
            .iter()
            .find(|m| !(m.is_finite() && **m > 0.0))
        {
            bail!("`lr-multipliers` holds {m}: each must be a finite number > 0");
        }
        if let Some(o) = self
            .optimizers
            .iter()
            .find(|o| !(o.base_lr.is_finite() && o.base_lr > 0.0))
        {
            bail!(
                "`base-lr` of {} = {}: must be a finite number > 0",
                o.label(),
                o.base_lr
            );
        }
        if self.epochs == 0 {
            bail!("`epochs` = 0: must be at least 1");
        }
        let runs = self
            .batch_sizes
            .len()
            .saturating_mul(self.optimizers.len())
            .saturating_mul(self.lr_multipliers.len());
        if runs > MAX_RUNS {
            bail!(
                "the grid has {} batch sizes x {} optimizers x {} learning rates = {runs} runs; \
                 a sweep holds at most {MAX_RUNS} (split it into several sweeps)",
                self.batch_sizes.len(),
                self.optimizers.len(),
                self.lr_multipliers.len()
            );
        }
        // Each optimizer's preset and values, checked by its description now rather than
        // when its first run starts.
        for o in &self.optimizers {
            crate::optim::effective(o.optimizer, o.preset.as_deref(), &o.given())
                .with_context(|| format!("optimizer `{}` of the grid", o.label()))?;
        }
        let mut ids: Vec<String> = self.plan().into_iter().map(|p| p.id).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        if ids.len() != n {
            bail!("the grid repeats a run (same optimizer, preset, batch size and learning rate): remove the duplicate values");
        }
        Ok(())
    }

    /// Whether a sweep directory recorded with `self` may continue with `new`: every setting
    /// that decides a run's numbers must agree (budget, schedule, seed, data, and the preset,
    /// weight decay and momentum of each optimizer both name); the lists of batch sizes,
    /// multipliers and optimizers may grow or shrink, since runs are found by name
    /// (optimizer, batch size, learning rate). Returns what differs otherwise.
    pub fn incompatibility(&self, new: &SweepSpec) -> Option<String> {
        let mut diff = Vec::new();
        macro_rules! same {
            ($($f:ident),*) => { $(if self.$f != new.$f { diff.push(stringify!($f).replace('_', "-")); })* };
        }
        same!(
            epochs,
            schedule,
            warmup_epochs,
            decay_power,
            seed,
            activation,
            model,
            train_images,
            test_images
        );
        for o in &new.optimizers {
            if let Some(r) = self.optimizers.iter().find(|r| r.label() == o.label()) {
                if (r.weight_decay, r.momentum, r.nesterov)
                    != (o.weight_decay, o.momentum, o.nesterov)
                {
                    diff.push(format!("weight-decay or momentum of {}", o.label()));
                }
            }
        }
        (!diff.is_empty()).then(|| diff.join(", "))
    }

    /// Learning rate at the centre of the grid for `opt` at `batch`.
    pub fn centre_lr(&self, opt: &OptimizerGrid, batch: usize) -> f64 {
        self.scaling.centre(opt.base_lr, batch, self.base_batch)
    }

    /// Every run, ordered by batch size, then optimizer, then learning rate.
    pub fn plan(&self) -> Vec<RunPlan> {
        let mut out = Vec::new();
        for &batch in &self.batch_sizes {
            for (oi, o) in self.optimizers.iter().enumerate() {
                for (mi, m) in self.lr_multipliers.iter().enumerate() {
                    let lr = shortest(self.centre_lr(o, batch) * m);
                    out.push(RunPlan {
                        id: format!("{}-b{batch}-lr{lr:.3e}", o.label()),
                        opt: oi,
                        batch,
                        mult: mi,
                        lr,
                    });
                }
            }
        }
        out
    }

    /// Training images each run sees per epoch, given the split's size.
    pub fn train_len(&self, split: usize) -> usize {
        self.train_images.map_or(split, |n| n.min(split))
    }
}

/// `x` rounded to 4 significant digits, so that run names and recorded rates agree.
pub(super) fn shortest(x: f64) -> f64 {
    format!("{x:.3e}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_sized_as_documented() {
        let s = Preset::Small.spec();
        s.validate().unwrap();
        assert_eq!(s.plan().len(), 60);
        let f = Preset::Full.spec();
        f.validate().unwrap();
        assert_eq!(f.plan().len(), 175);
    }

    #[test]
    fn sqrt_scaling_centres_the_grid() {
        let s = Preset::Small.spec();
        let lamb = &s.optimizers[0];
        assert!((s.centre_lr(lamb, 400) - 2.0 * lamb.base_lr).abs() < 1e-12);
        let p = s.plan();
        let b1000: Vec<_> = p.iter().filter(|r| r.batch == 1000 && r.opt == 0).collect();
        assert_eq!(b1000.len(), 4);
        assert!((b1000[1].lr - shortest(4e-3 * 10f64.sqrt())).abs() < 1e-12);
        assert_eq!(b1000[1].id, "lamb-b1000-lr1.265e-2");
    }

    #[test]
    fn a_grid_may_grow_but_not_change_what_decides_a_run() {
        let s = Preset::Small.spec();
        let mut wider = s.clone();
        wider.lr_multipliers.push(4.0);
        wider.batch_sizes.push(2000);
        assert_eq!(s.incompatibility(&wider), None);
        // Every run of the old grid keeps its name in the wider one.
        let ids: Vec<String> = wider.plan().into_iter().map(|p| p.id).collect();
        assert!(s.plan().iter().all(|p| ids.contains(&p.id)));
        let mut longer = s.clone();
        longer.epochs = 7;
        longer.optimizers[0].weight_decay = Some(0.1);
        let why = s.incompatibility(&longer).unwrap();
        assert!(
            why.contains("epochs") && why.contains("weight-decay or momentum of lamb"),
            "{why}"
        );
    }

    #[test]
    fn round_trips_through_toml_and_rejects_bad_grids() {
        let s = Preset::Small.spec();
        let text = s.to_toml().unwrap();
        let back: SweepSpec = toml::from_str(&text).unwrap();
        assert_eq!(back, s);
        let mut bad = s.clone();
        bad.lr_multipliers.push(1.0);
        assert!(bad.validate().unwrap_err().to_string().contains("repeats"));
        let mut bad = s.clone();
        bad.batch_sizes = vec![0];
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("batch-sizes"));
        let unknown = format!("{text}\nbogus = 1\n");
        assert!(toml::from_str::<SweepSpec>(&unknown).is_err());
        // Presets and values are checked against the optimizer's description.
        for (change, needle) in [
            ("preset", "lamb-nope"),
            ("momentum", "does not apply to lamb"),
            ("weight-decay", "weight-decay"),
        ] {
            let mut bad = s.clone();
            match change {
                "preset" => bad.optimizers[0].preset = Some("nope".into()),
                "momentum" => bad.optimizers[0].momentum = Some(0.9),
                _ => bad.optimizers[0].weight_decay = Some(-1.0),
            }
            let e = format!("{:#}", bad.validate().unwrap_err());
            assert!(e.contains(needle), "{change}: {e}");
        }
    }
}
