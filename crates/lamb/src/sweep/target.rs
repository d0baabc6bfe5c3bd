//! `lamb sweep --metric steps-to-target`: steps (and seconds) to a target validation accuracy
//! per optimizer and batch size, each cell tuned (Shallue et al. 2018, arXiv 1811.03600).
//!
//! Every run trains on the training split minus a seeded, stratified validation part, stops at
//! the first validation pass (every `eval-every-images` images) that reaches the target, and
//! counts as a failure when its step budget ends first. For each cell (optimizer, batch size)
//! the learning-rate grid around the scaled centre is tried at every warmup of the grid; while
//! the best rate is at an edge of what was tried, the grid grows past that edge (at most
//! `max-refinements` times); the best setting is then run again with the other seeds. The plan
//! is a pure function of the runs already finished, so an interrupted sweep, or several
//! workers sharing the directory, continue the same plan.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::exec::{self, Execution, Job};
use super::spec::{shortest, OptimizerGrid, Scaling};
use super::status::RunStatus;
use crate::config::{ActivationKind, OptimizerKind, ScheduleKind};

/// File (TOML) recording a steps-to-target sweep's grid in its directory.
pub const SPEC_FILE: &str = "target-sweep.toml";

/// A steps-to-target sweep; the TOML form of `lamb sweep --metric steps-to-target --config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TargetSpec {
    /// The target validation accuracy.
    pub target_accuracy: f64,
    /// Fraction of the training images held out (seeded, stratified) for validation.
    pub validation_split: f64,
    /// Validate after about this many training images (rounded up to whole steps).
    pub eval_every_images: usize,
    /// Global batch sizes.
    pub batch_sizes: Vec<usize>,
    /// Step budget of each batch size, in epochs (same order as `batch-sizes`); the schedule
    /// decays over it, and a run that has not reached the target by its end failed.
    pub budget_epochs: Vec<usize>,
    /// Batch size at which each optimizer's `base-lr` applies.
    pub base_batch: usize,
    /// How the centre of the learning-rate grid moves with the batch size.
    pub scaling: Scaling,
    /// Multipliers of the scaled learning rate tried first.
    pub lr_multipliers: Vec<f64>,
    /// Linear warmups tried, in epochs.
    pub warmup_epochs: Vec<f64>,
    /// Factor by which the grid grows past an edge that holds the best rate.
    pub refine_factor: f64,
    /// At most this many growths per cell.
    pub max_refinements: usize,
    /// Learning-rate schedule after warmup (over the budget).
    pub schedule: ScheduleKind,
    /// Exponent of the poly schedule's decay.
    pub decay_power: f64,
    /// Seeds: the first tunes, the others repeat each cell's best setting.
    pub seeds: Vec<u64>,
    /// Hidden activation of the seed CNN.
    pub activation: ActivationKind,
    /// The model (`seed-cnn`, `resnet20` or a Keras model JSON file); `None`: the seed CNN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Use only this many training images (before the validation split); `None`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images: Option<usize>,
    /// The optimizers.
    pub optimizers: Vec<OptimizerGrid>,
}

/// One run of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRun {
    /// Directory name under `<sweep>/runs/`.
    pub id: String,
    /// Index of the optimizer in [`TargetSpec::optimizers`].
    pub opt: usize,
    /// Global batch size.
    pub batch: usize,
    /// Multiplier of the cell's centre learning rate.
    pub mult: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup in epochs.
    pub warmup: f64,
    /// Seed.
    pub seed: u64,
}

/// How a run ended, read from its directory.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Not finished (not started, running, or interrupted).
    Pending,
    /// Reached the target.
    Reached {
        /// Training steps by then.
        step: usize,
        /// Seconds of training and validation by then.
        seconds: f64,
        /// Epochs (images seen / training images) by then.
        epochs: f64,
    },
    /// Used its whole budget without reaching the target.
    Missed,
    /// Stopped by an error (diverged: a non-finite loss).
    Failed,
}

impl Outcome {
    /// Steps to the target, `None` unless reached.
    pub fn steps(&self) -> Option<usize> {
        match self {
            Outcome::Reached { step, .. } => Some(*step),
            _ => None,
        }
    }
}

/// Where a cell's tuning stands.
#[derive(Clone, Debug, PartialEq)]
pub enum CellState {
    /// Some tuning runs are not finished.
    Tuning,
    /// Every tuning run finished and none reached the target.
    NoneReached,
    /// The best setting is known (its seed runs may still be running).
    Settled {
        /// The best tuning run.
        best: TargetRun,
        /// Whether it lies at an edge of the rates tried (after the last growth).
        at_edge: bool,
    },
}

/// A cell of the plan: its runs so far and its state.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Index of the optimizer.
    pub opt: usize,
    /// Batch size.
    pub batch: usize,
    /// Every run the cell needs now (tuning, then seeds).
    pub runs: Vec<TargetRun>,
    /// Where it stands.
    pub state: CellState,
}

/// The optimizer family with their centres at batch 100 (those of the batch-size sweep) and
/// SGD with Nesterov momentum.
fn family() -> Vec<OptimizerGrid> {
    let mut f = super::spec::Preset::Small.spec().optimizers;
    for o in &mut f {
        if o.optimizer == OptimizerKind::Sgd {
            o.nesterov = Some(true);
        }
    }
    f
}

impl TargetSpec {
    /// The built-in grids: `small` fits in about an hour on 2 cores, `full` is for many
    /// machines.
    pub fn preset(p: super::spec::Preset) -> TargetSpec {
        let small = TargetSpec {
            // 0.55 rather than 0.60: on 2 cores the runs at batch 4096 need ~16 epochs for
            // 0.60 (measured, LAMB at the centre rate), which would put the preset near two
            // hours; 0.55 keeps it near one.
            target_accuracy: 0.55,
            validation_split: 0.1,
            eval_every_images: 11_250,
            batch_sizes: vec![64, 256, 1024, 4096],
            budget_epochs: vec![6, 8, 14, 28],
            base_batch: 100,
            scaling: Scaling::Sqrt,
            lr_multipliers: vec![0.5, 1.0, 2.0],
            warmup_epochs: vec![0.5],
            refine_factor: 2.0,
            max_refinements: 2,
            schedule: ScheduleKind::Poly,
            decay_power: 1.0,
            seeds: vec![42, 43, 44],
            activation: ActivationKind::Relu,
            model: None,
            train_images: None,
            optimizers: family(),
        };
        match p {
            super::spec::Preset::Small => small,
            super::spec::Preset::Full => TargetSpec {
                target_accuracy: 0.65,
                eval_every_images: 5_000,
                batch_sizes: vec![64, 128, 256, 512, 1024, 2048, 4096, 8192],
                budget_epochs: vec![20, 20, 25, 30, 40, 60, 80, 120],
                lr_multipliers: vec![0.25, 0.5, 1.0, 2.0, 4.0],
                warmup_epochs: vec![0.5, 2.0, 5.0],
                ..small
            },
        }
    }

    /// Reads a sweep file (TOML).
    pub fn from_file(path: &Path) -> Result<Self> {
        super::spec::read_grid(path, "steps-to-target sweep file", TargetSpec::validate)
    }

    /// The TOML text of this spec.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("serialising the sweep")
    }

    /// Range checks of the grid (each run's settings are checked again by `train`).
    pub fn validate(&self) -> Result<()> {
        if !(self.target_accuracy > 0.0 && self.target_accuracy <= 1.0) {
            bail!(
                "`target-accuracy` = {}: must be an accuracy in (0, 1], e.g. 0.6",
                self.target_accuracy
            );
        }
        if !(self.validation_split > 0.0 && self.validation_split < 1.0) {
            bail!(
                "`validation-split` = {}: must be a fraction in (0, 1), e.g. 0.1",
                self.validation_split
            );
        }
        if self.eval_every_images == 0 {
            bail!("`eval-every-images` = 0: must be at least 1");
        }
        if self.batch_sizes.is_empty() || self.optimizers.is_empty() {
            bail!("`batch-sizes` and `optimizers` must each list at least one value");
        }
        if self.lr_multipliers.is_empty() || self.warmup_epochs.is_empty() || self.seeds.is_empty()
        {
            bail!(
                "`lr-multipliers`, `warmup-epochs` and `seeds` must each list at least one value"
            );
        }
        if self.budget_epochs.len() != self.batch_sizes.len() {
            bail!(
                "`budget-epochs` lists {} values for {} batch sizes: give one per batch size",
                self.budget_epochs.len(),
                self.batch_sizes.len()
            );
        }
        if let Some(b) = self.batch_sizes.iter().find(|&&b| b == 0 || b > 1_000_000) {
            bail!("`batch-sizes` holds {b}: each must be between 1 and 1000000");
        }
        let mut sorted = self.batch_sizes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted != self.batch_sizes {
            bail!("`batch-sizes` must be increasing without repeats");
        }
        if let Some(e) = self.budget_epochs.iter().find(|&&e| e == 0 || e > 100_000) {
            bail!("`budget-epochs` holds {e}: each must be between 1 and 100000");
        }
        if self.base_batch == 0 {
            bail!("`base-batch` = 0: must be at least 1");
        }
        let positive = |name: &str, v: &[f64]| -> Result<()> {
            if let Some(x) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                bail!("`{name}` holds {x}: each must be a finite number > 0");
            }
            Ok(())
        };
        positive("lr-multipliers", &self.lr_multipliers)?;
        if let Some(w) = self
            .warmup_epochs
            .iter()
            .find(|w| !(w.is_finite() && **w >= 0.0))
        {
            bail!("`warmup-epochs` holds {w}: each must be a finite number >= 0");
        }
        if !(self.refine_factor.is_finite() && self.refine_factor > 1.0) {
            bail!(
                "`refine-factor` = {}: must be a finite number > 1, e.g. 2",
                self.refine_factor
            );
        }
        if self.max_refinements > 10 {
            bail!("`max-refinements` = {}: at most 10", self.max_refinements);
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
        let mut labels: Vec<String> = self.optimizers.iter().map(OptimizerGrid::label).collect();
        labels.sort();
        let n = labels.len();
        labels.dedup();
        if labels.len() != n {
            bail!("an optimizer appears twice (same optimizer and preset): remove the duplicate");
        }
        for o in &self.optimizers {
            crate::optim::effective(o.optimizer, o.preset.as_deref(), &o.given())
                .with_context(|| format!("optimizer `{}` of the grid", o.label()))?;
        }
        let runs = self.first_round().len();
        if runs > super::spec::MAX_RUNS {
            bail!(
                "the first round alone has {runs} runs; a sweep holds at most {}",
                super::spec::MAX_RUNS
            );
        }
        Ok(())
    }

    /// What differs between a recorded grid and `new` that would change the numbers of runs
    /// already there (`None`: `new` may continue the directory).
    pub fn incompatibility(&self, new: &TargetSpec) -> Option<String> {
        let mut diff = Vec::new();
        macro_rules! same {
            ($($f:ident),*) => { $(if self.$f != new.$f { diff.push(stringify!($f).replace('_', "-")); })* };
        }
        same!(
            target_accuracy,
            validation_split,
            eval_every_images,
            schedule,
            decay_power,
            activation,
            model,
            train_images
        );
        for (b, e) in new.batch_sizes.iter().zip(&new.budget_epochs) {
            if let Some(i) = self.batch_sizes.iter().position(|x| x == b) {
                if self.budget_epochs[i] != *e {
                    diff.push(format!("budget-epochs of batch {b}"));
                }
            }
        }
        for o in &new.optimizers {
            if let Some(r) = self.optimizers.iter().find(|r| r.label() == o.label()) {
                if r != o {
                    diff.push(format!("settings of {}", o.label()));
                }
            }
        }
        (!diff.is_empty()).then(|| diff.join(", "))
    }

    /// The step budget of `batch`, in epochs.
    pub fn budget(&self, batch: usize) -> usize {
        let i = self.batch_sizes.iter().position(|&b| b == batch);
        i.map_or(1, |i| self.budget_epochs[i])
    }

    /// Validation every this many steps at `batch`.
    pub fn eval_every(&self, batch: usize) -> usize {
        self.eval_every_images.div_ceil(batch).max(1)
    }

    /// The run of cell (`opt`, `batch`) at multiplier `mult`, warmup and seed.
    pub fn run(&self, opt: usize, batch: usize, mult: f64, warmup: f64, seed: u64) -> TargetRun {
        let o = &self.optimizers[opt];
        let lr = shortest(self.scaling.centre(o.base_lr, batch, self.base_batch) * mult);
        TargetRun {
            id: format!("{}-b{batch}-lr{lr:.3e}-w{warmup}-s{seed}", o.label()),
            opt,
            batch,
            mult,
            lr,
            warmup,
            seed,
        }
    }

    fn first_round(&self) -> Vec<TargetRun> {
        let mut out = Vec::new();
        for &b in &self.batch_sizes {
            for o in 0..self.optimizers.len() {
                out.extend(self.tuning_runs(o, b, &self.lr_multipliers));
            }
        }
        out
    }

    fn tuning_runs(&self, opt: usize, batch: usize, mults: &[f64]) -> Vec<TargetRun> {
        let mut out = Vec::new();
        for &m in mults {
            for &w in &self.warmup_epochs {
                out.push(self.run(opt, batch, m, w, self.seeds[0]));
            }
        }
        out
    }

    /// The plan given the outcomes of the runs so far: every cell, in batch-size then
    /// optimizer order.
    pub fn plan(&self, outcome: &dyn Fn(&TargetRun) -> Outcome) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &batch in &self.batch_sizes {
            for opt in 0..self.optimizers.len() {
                cells.push(self.plan_cell(opt, batch, outcome));
            }
        }
        cells
    }

    fn plan_cell(&self, opt: usize, batch: usize, outcome: &dyn Fn(&TargetRun) -> Outcome) -> Cell {
        let mut mults = self.lr_multipliers.clone();
        mults.sort_by(f64::total_cmp);
        let mut refinements = 0;
        loop {
            let runs = self.tuning_runs(opt, batch, &mults);
            let outs: Vec<Outcome> = runs.iter().map(outcome).collect();
            if outs.contains(&Outcome::Pending) {
                return Cell {
                    opt,
                    batch,
                    runs,
                    state: CellState::Tuning,
                };
            }
            let best = runs
                .iter()
                .zip(&outs)
                .filter_map(|(r, o)| match o {
                    Outcome::Reached { step, seconds, .. } => Some((r, *step, *seconds)),
                    _ => None,
                })
                // Fewest steps; then fewer seconds; then the earlier (lower) setting.
                .min_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)));
            let Some((best, _, _)) = best else {
                return Cell {
                    opt,
                    batch,
                    runs,
                    state: CellState::NoneReached,
                };
            };
            let (lo, hi) = (mults[0], mults[mults.len() - 1]);
            if refinements < self.max_refinements {
                if best.mult == hi {
                    mults.push(hi * self.refine_factor);
                    refinements += 1;
                    continue;
                }
                if best.mult == lo {
                    mults.insert(0, lo / self.refine_factor);
                    refinements += 1;
                    continue;
                }
            }
            let best = best.clone();
            let at_edge = best.mult == lo || best.mult == hi;
            let mut all = runs.clone();
            for &s in &self.seeds[1..] {
                all.push(self.run(opt, batch, best.mult, best.warmup, s));
            }
            return Cell {
                opt,
                batch,
                runs: all,
                state: CellState::Settled { best, at_edge },
            };
        }
    }

    /// The `lamb train` arguments of a fresh run.
    pub fn train_args(&self, r: &TargetRun, out: &Path, ex: &Execution) -> Vec<String> {
        let o = &self.optimizers[r.opt];
        let mut a: Vec<String> = vec![
            "train".into(),
            "--out".into(),
            out.display().to_string(),
            "--optimizer".into(),
            o.optimizer.as_str().into(),
            "--batch-size".into(),
            r.batch.to_string(),
            "--lr".into(),
            format!("{}", r.lr),
            "--epochs".into(),
            self.budget(r.batch).to_string(),
            "--seed".into(),
            r.seed.to_string(),
            "--schedule".into(),
            self.schedule.as_str().into(),
            "--warmup-epochs".into(),
            format!("{}", r.warmup),
            "--activation".into(),
            self.activation.as_str().into(),
            "--validation-split".into(),
            format!("{}", self.validation_split),
            "--target-accuracy".into(),
            format!("{}", self.target_accuracy),
            "--eval-every".into(),
            self.eval_every(r.batch).to_string(),
        ];
        if self.schedule == ScheduleKind::Poly {
            a.extend(["--decay-power".into(), format!("{}", self.decay_power)]);
        }
        o.push_args(&mut a);
        if let Some(m) = &self.model {
            a.extend(["--model".into(), m.clone()]);
        }
        if let Some(n) = self.train_images {
            a.extend(["--limit-train".into(), n.to_string()]);
        }
        exec::common_args(&mut a, ex);
        a
    }
}

#[derive(Deserialize)]
struct TargetFile {
    reached: bool,
    step: Option<usize>,
    epochs: Option<f64>,
    seconds: Option<f64>,
}

/// The outcome of the run in `dir`, from its sweep status and `target.json`.
pub fn read_outcome(dir: &Path) -> Outcome {
    let Some(status) = RunStatus::read(dir) else {
        return Outcome::Pending;
    };
    if !status.completed() {
        return Outcome::Failed;
    }
    let Ok(bytes) = lamb_data::read_capped(&dir.join(crate::run::TARGET_FILE), 1 << 20) else {
        return Outcome::Failed;
    };
    let Ok(t) = serde_json::from_slice::<TargetFile>(&bytes) else {
        return Outcome::Failed;
    };
    match (t.reached, t.step, t.seconds) {
        (true, Some(step), Some(seconds)) => Outcome::Reached {
            step,
            seconds,
            epochs: t.epochs.unwrap_or(f64::NAN),
        },
        _ => Outcome::Missed,
    }
}

/// Runs (or continues) a steps-to-target sweep in `dir`; returns whether every planned run
/// finished.
pub fn run_sweep(
    spec: &TargetSpec,
    ex: &Execution,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<bool> {
    use std::sync::atomic::Ordering;
    let runs_dir = ex.dir.join("runs");
    let mut round = 0;
    loop {
        // Each run's outcome read once per round: those the plan asked about are kept; the
        // seed runs it adds without asking are read here.
        let seen = std::cell::RefCell::new(std::collections::HashMap::new());
        let cells = spec.plan(&|r| {
            let o = read_outcome(&runs_dir.join(&r.id));
            seen.borrow_mut().insert(r.id.clone(), o.clone());
            o
        });
        let seen = seen.into_inner();
        let mut pending: Vec<&TargetRun> = cells
            .iter()
            .flat_map(|c| c.runs.iter())
            .filter(|r| match seen.get(&r.id) {
                Some(o) => *o == Outcome::Pending,
                None => read_outcome(&runs_dir.join(&r.id)) == Outcome::Pending,
            })
            .collect();
        // Largest batches (longest runs) first, so that the round ends with short runs.
        pending.sort_by_key(|r| std::cmp::Reverse(r.batch));
        let todo: Vec<Job> = pending
            .into_iter()
            .map(|r| Job {
                id: r.id.clone(),
                args: spec.train_args(r, &runs_dir.join(&r.id), ex),
            })
            .collect();
        if todo.is_empty() {
            return Ok(true);
        }
        round += 1;
        let settled = cells
            .iter()
            .filter(|c| !matches!(c.state, CellState::Tuning))
            .count();
        println!(
            "Round {round}: {} run(s) to do; {settled} of {} cells tuned",
            todo.len(),
            cells.len()
        );
        let tally = exec::run_grid(&todo, ex, stop)?;
        if stop.load(Ordering::SeqCst) || tally.interrupted > 0 {
            return Ok(false);
        }
        if tally.completed + tally.failed == 0 {
            // Everything left is held by other workers: wait for one of them to finish.
            let held: Vec<PathBuf> = todo.iter().map(|j| runs_dir.join(&j.id)).collect();
            println!(
                "{} run(s) are held by other workers; waiting for them (Ctrl-C leaves them running)",
                held.len()
            );
            while held.iter().all(|d| lamb_run::RunLock::is_held(d)) {
                if stop.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::spec::Preset;

    fn spec() -> TargetSpec {
        TargetSpec {
            optimizers: family()[..2].to_vec(),
            batch_sizes: vec![100, 400],
            budget_epochs: vec![2, 4],
            ..TargetSpec::preset(Preset::Small)
        }
    }

    #[test]
    fn presets_are_valid() {
        TargetSpec::preset(Preset::Small).validate().unwrap();
        TargetSpec::preset(Preset::Full).validate().unwrap();
        let s = TargetSpec::preset(Preset::Small);
        assert_eq!(s.first_round().len(), 4 * 5 * 3);
        assert!(s.optimizers.iter().any(|o| o.label() == "sgd-nesterov"));
        let text = s.to_toml().unwrap();
        assert_eq!(toml::from_str::<TargetSpec>(&text).unwrap(), s);
    }

    #[test]
    fn bad_grids_are_refused_by_name() {
        type Edit = fn(&mut TargetSpec);
        let edits: [(Edit, &str); 5] = [
            (|s| s.budget_epochs.truncate(1), "budget-epochs"),
            (|s| s.batch_sizes.reverse(), "increasing"),
            (|s| s.refine_factor = 1.0, "refine-factor"),
            (|s| s.target_accuracy = 1.5, "target-accuracy"),
            (|s| s.seeds.clear(), "seeds"),
        ];
        for (edit, needle) in edits {
            let mut s = spec();
            edit(&mut s);
            let e = format!("{:#}", s.validate().unwrap_err());
            assert!(e.contains(needle), "{e}");
        }
    }

    /// Outcomes from a table of (id prefix, steps); unlisted runs are pending.
    fn outcomes(done: &[(String, Option<usize>)]) -> impl Fn(&TargetRun) -> Outcome + '_ {
        move |r| match done.iter().find(|(id, _)| *id == r.id) {
            None => Outcome::Pending,
            Some((_, Some(step))) => Outcome::Reached {
                step: *step,
                seconds: *step as f64,
                epochs: 1.0,
            },
            Some((_, None)) => Outcome::Missed,
        }
    }

    #[test]
    fn the_grid_grows_past_an_edge_that_holds_the_best_rate_then_repeats_the_best_seeds() {
        let s = spec();
        let cell = |done: &[(String, Option<usize>)]| s.plan_cell(0, 100, &outcomes(done));
        let r = |m: f64, seed: u64| s.run(0, 100, m, 0.5, seed).id;
        // First round: three rates at the first seed, nothing finished.
        let c = cell(&[]);
        assert_eq!(c.state, CellState::Tuning);
        assert_eq!(c.runs.len(), 3);
        // The highest rate is best: the grid grows upward.
        let mut done = vec![
            (r(0.5, 42), Some(300)),
            (r(1.0, 42), Some(200)),
            (r(2.0, 42), Some(100)),
        ];
        let c = cell(&done);
        assert_eq!(c.state, CellState::Tuning);
        assert_eq!(c.runs.last().unwrap().id, r(4.0, 42));
        // 4x is worse: 2x is the best, inside the grid; the other seeds repeat it.
        done.push((r(4.0, 42), None));
        let c = cell(&done);
        let CellState::Settled { best, at_edge } = &c.state else {
            panic!("{:?}", c.state)
        };
        assert_eq!((best.mult, *at_edge), (2.0, false));
        let ids: Vec<&str> = c.runs.iter().map(|r| r.id.as_str()).collect();
        assert!(ids.contains(&r(2.0, 43).as_str()) && ids.contains(&r(2.0, 44).as_str()));
        // At most two growths: a best rate still at the edge is reported as such.
        let mut up = vec![
            (r(0.5, 42), Some(300)),
            (r(1.0, 42), Some(200)),
            (r(2.0, 42), Some(100)),
        ];
        up.push((r(4.0, 42), Some(90)));
        up.push((r(8.0, 42), Some(80)));
        let c = cell(&up);
        let CellState::Settled { best, at_edge } = &c.state else {
            panic!("{:?}", c.state)
        };
        assert_eq!((best.mult, *at_edge), (8.0, true));
        // Nothing reached: the cell is a failure, with no seed runs.
        let none = vec![(r(0.5, 42), None), (r(1.0, 42), None), (r(2.0, 42), None)];
        assert_eq!(cell(&none).state, CellState::NoneReached);
        assert_eq!(cell(&none).runs.len(), 3);
    }

    #[test]
    fn runs_train_with_the_target_the_split_and_a_pass_per_quarter_epoch() {
        let s = TargetSpec::preset(Preset::Small);
        let ex = Execution {
            dir: "sw".into(),
            data: None,
            threads: 1,
            jobs: 1,
            retry_failed: false,
        };
        let sgd = s
            .optimizers
            .iter()
            .position(|o| o.label() == "sgd-nesterov")
            .unwrap();
        let r = s.run(sgd, 4096, 1.0, 0.5, 42);
        let a = s.train_args(&r, Path::new("sw/runs/x"), &ex).join(" ");
        for want in [
            "--target-accuracy 0.55",
            "--validation-split 0.1",
            "--eval-every 3",
            "--epochs 28",
            "--hyper nesterov=true",
            "--momentum 0.9",
        ] {
            assert!(a.contains(want), "{want}: {a}");
        }
        assert_eq!(s.eval_every(64), 176);
    }
}
