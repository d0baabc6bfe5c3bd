//! The results and report of a steps-to-target sweep: each cell's median over seeds and
//! where scaling ends; `steps_to_target.md` (table of best settings, steps
//! and seconds to the target, where each optimizer leaves perfect scaling, what the data
//! supports), `steps_to_target.csv` (every cell) and the log-log plots.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::target::{read_outcome, CellState, Outcome, TargetRun, TargetSpec};
use crate::atomic::write_atomic;
use crate::plots::{write_chart, Chart, Dash, Series};

fn setting(c: &CellResult) -> Option<(f64, f64, bool)> {
    match &c.state {
        CellState::Settled { best, at_edge } => Some((best.lr, best.warmup, *at_edge)),
        _ => None,
    }
}

fn status(c: &CellResult) -> String {
    match &c.state {
        CellState::Tuning => "tuning".into(),
        CellState::NoneReached => "no rate reached the target".into(),
        CellState::Settled { .. } => {
            let (ok, done) = c.reached();
            if done < c.seeds.len() {
                format!("seeds running ({done}/{} done)", c.seeds.len())
            } else {
                format!("{ok}/{done} seeds reached")
            }
        }
    }
}

/// The table (Markdown) of every cell.
pub fn table(spec: &TargetSpec, cells: &[CellResult]) -> String {
    let mut t = String::from(
        "| optimizer | batch | best lr | warmup (epochs) | steps to target (median; min-max) | epochs | seconds | runs | status |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for c in cells {
        let (lr, warm) = match setting(c) {
            Some((lr, w, edge)) => (
                format!("{lr:.3e}{}", if edge { " (edge)" } else { "" }),
                format!("{w}"),
            ),
            None => ("-".into(), "-".into()),
        };
        let steps = match (c.median_steps(), c.steps_range()) {
            (Some(m), Some((lo, hi))) => format!("{m} ({lo}-{hi})"),
            (None, _) if c.reached().1 == spec.seeds.len() => "not reached".into(),
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {lr} | {warm} | {steps} | {} | {} | {} | {} |",
            c.optimizer,
            c.batch,
            c.median_epochs().map_or("-".into(), |e| format!("{e:.2}")),
            c.median_seconds().map_or("-".into(), |s| format!("{s:.0}")),
            c.tuning_runs + c.seeds.len().saturating_sub(1),
            status(c)
        );
    }
    t
}

fn write_csv(cells: &[CellResult], dir: &Path) -> Result<()> {
    let mut csv = String::from(
        "optimizer,batch,best_lr,warmup_epochs,at_edge,median_steps,min_steps,max_steps,median_epochs,median_seconds,seeds_reached,seeds_done,tuning_runs\n",
    );
    let o = |x: Option<String>| x.unwrap_or_default();
    for c in cells {
        let s = setting(c);
        let (ok, done) = c.reached();
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{ok},{done},{}",
            c.optimizer,
            c.batch,
            o(s.map(|s| format!("{}", s.0))),
            o(s.map(|s| format!("{}", s.1))),
            o(s.map(|s| s.2.to_string())),
            o(c.median_steps().map(|x| x.to_string())),
            o(c.steps_range().map(|r| r.0.to_string())),
            o(c.steps_range().map(|r| r.1.to_string())),
            o(c.median_epochs().map(|x| format!("{x:.3}"))),
            o(c.median_seconds().map(|x| format!("{x:.1}"))),
            c.tuning_runs
        );
    }
    write_atomic(&dir.join("steps_to_target.csv"), csv.as_bytes())
}

fn by_optimizer<'a>(
    spec: &TargetSpec,
    cells: &'a [CellResult],
) -> Vec<(String, Vec<&'a CellResult>)> {
    spec.optimizers
        .iter()
        .map(|o| {
            let l = o.label();
            let mine = cells.iter().filter(|c| c.optimizer == l).collect();
            (l, mine)
        })
        .collect()
}

fn write_plots(spec: &TargetSpec, cells: &[CellResult], dir: &Path) -> Result<()> {
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)?;
    let groups = by_optimizer(spec, cells);
    let mut steps = Vec::new();
    let mut secs = Vec::new();
    for (i, (label, mine)) in groups.iter().enumerate() {
        let pts: Vec<(f64, f64)> = mine
            .iter()
            .filter_map(|c| c.median_steps().map(|s| (c.batch as f64, s as f64)))
            .collect();
        if let Some(&(b0, s0)) = pts.first() {
            let ideal = spec
                .batch_sizes
                .iter()
                .filter(|&&b| b as f64 >= b0)
                .map(|&b| (b as f64, s0 * b0 / b as f64))
                .collect();
            steps.push(Series {
                label: format!("{label}: perfect scaling"),
                points: ideal,
                color: i,
                dash: Dash::Dashed,
            });
        }
        steps.push(Series {
            label: label.clone(),
            points: pts,
            color: i,
            dash: Dash::Solid,
        });
        secs.push(Series {
            label: label.clone(),
            points: mine
                .iter()
                .filter_map(|c| c.median_seconds().map(|s| (c.batch as f64, s)))
                .collect(),
            color: i,
            dash: Dash::Solid,
        });
    }
    let chart = |title: String, y: &str, series| Chart {
        title,
        x_label: "batch size".into(),
        y_label: y.into(),
        series,
        log_y: true,
        legend_top: true,
        log_x: true,
    };
    write_chart(
        &plots.join("steps_to_target"),
        &chart(
            format!(
                "Steps to {} validation accuracy (median of {} seeds, each cell tuned)",
                spec.target_accuracy,
                spec.seeds.len()
            ),
            "steps to target",
            steps,
        ),
    )?;
    write_chart(
        &plots.join("seconds_to_target"),
        &chart(
            format!(
                "Seconds to {} validation accuracy (training + validation, this machine)",
                spec.target_accuracy
            ),
            "seconds to target",
            secs,
        ),
    )?;
    Ok(())
}

/// What the finished cells say, in sentences computed from them (no interpretation beyond
/// them).
fn findings(spec: &TargetSpec, cells: &[CellResult]) -> String {
    let mut s = String::new();
    for &b in &spec.batch_sizes {
        let mut here: Vec<(&CellResult, usize)> = cells
            .iter()
            .filter(|c| c.batch == b)
            .filter_map(|c| c.median_steps().map(|m| (c, m)))
            .collect();
        here.sort_by_key(|x| x.1);
        let missed: Vec<&str> = cells
            .iter()
            .filter(|c| c.batch == b && c.median_steps().is_none() && c.reached().1 > 0)
            .chain(
                cells
                    .iter()
                    .filter(|c| c.batch == b && c.state == CellState::NoneReached),
            )
            .map(|c| c.optimizer.as_str())
            .collect();
        let order: Vec<String> = here
            .iter()
            .map(|(c, m)| format!("{} {m}", c.optimizer))
            .collect();
        let _ = writeln!(
            s,
            "- Batch {b}: {}{}",
            if order.is_empty() {
                "no optimizer reached the target (median seed)".to_string()
            } else {
                format!("fewest steps first: {}", order.join(", "))
            },
            if missed.is_empty() {
                String::new()
            } else {
                format!("; missed within the budget: {}", missed.join(", "))
            }
        );
    }
    s.push('\n');
    for (label, mine) in by_optimizer(spec, cells) {
        let largest = mine
            .iter()
            .filter(|c| c.median_steps().is_some())
            .map(|c| c.batch)
            .max();
        let leaves = leaves_perfect_scaling(&mine);
        let _ = writeln!(
            s,
            "- {label}: largest batch reaching the target {}; {}",
            largest.map_or("none".into(), |b| b.to_string()),
            match leaves {
                Some(b) => format!("leaves perfect scaling at batch {b}"),
                None if largest.is_some() =>
                    "within perfect scaling at every batch size reached".into(),
                None => "no scaling to judge".into(),
            }
        );
    }
    s
}

/// Writes `steps_to_target.md`, `.csv` and the plots; returns the table.
pub fn write_all(spec: &TargetSpec, dir: &Path, command: &str) -> Result<String> {
    let cells = collect(spec, dir);
    let t = table(spec, &cells);
    write_csv(&cells, dir)?;
    write_plots(spec, &cells, dir)?;
    let pending = cells
        .iter()
        .filter(|c| c.state == CellState::Tuning || c.seeds.contains(&Outcome::Pending))
        .count();
    let mut md = format!(
        "# Steps to {} validation accuracy per batch size\n\n\
         Command: `{command}`\n\n\
         {} optimizers x batch sizes {:?}; model {}; validation: {} of the training images \
         held out (seeded, stratified), a pass every {} images; each cell tuned over the \
         learning rate (centre scaled {:?} from batch {}, multipliers {:?}, grown by {}x past an \
         edge holding the best, at most {} times) and warmup {:?} epochs, {} schedule over a \
         step budget of {:?} epochs per batch size; the best setting repeated with seeds {:?}. \
         A run that misses the target within its budget, or diverges, is a failure, and a \
         median over seeds counts it as slowest. The test set is not used.\n\n",
        spec.target_accuracy,
        spec.optimizers.len(),
        spec.batch_sizes,
        spec.model.as_deref().unwrap_or("seed-cnn"),
        spec.validation_split,
        spec.eval_every_images,
        spec.scaling,
        spec.base_batch,
        spec.lr_multipliers,
        spec.refine_factor,
        spec.max_refinements,
        spec.warmup_epochs,
        spec.schedule.as_str(),
        spec.budget_epochs,
        spec.seeds,
    );
    if pending > 0 {
        let _ = writeln!(
            md,
            "**Incomplete: {pending} cell(s) still running or to run.**\n"
        );
    }
    md.push_str(&t);
    let _ = write!(
        md,
        "\n(edge): the best rate lies at an edge of the rates tried after the last growth, so a \
         better one may lie beyond it.\n\n## What the cells show\n\n{}\n\
         Perfect scaling: doubling the batch halves the steps. An optimizer leaves it at the \
         first batch size whose median steps exceed {PERFECT_SCALING_SLACK}x what halving per \
         doubling predicts from its smallest batch size that reached the target (or that misses \
         the target). Steps are the measure; seconds are this machine's, runs sharing its cores.\n\n\
         ## What this does not show\n\n\
         - One model, one data set and one target; another target (a higher accuracy) moves \
           the batch size where scaling ends, usually to smaller batches.\n\
         - Tuning used one seed; the seed spread (min-max) says how much a cell's median can \
           move. Differences between optimizers smaller than that spread are not evidence.\n\
         - The grid is coarse (factor {} in the rate): a cell's best is within that factor of \
           its optimum, and a cell marked (edge) may do better outside the grid.\n\n\
         Plots: plots/steps_to_target.png (log-log, dashed: perfect scaling from each \
         optimizer's smallest batch), plots/seconds_to_target.png; every cell: steps_to_target.csv.\n",
        findings(spec, &cells),
        spec.refine_factor,
    );
    write_atomic(&dir.join("steps_to_target.md"), md.as_bytes())?;
    Ok(t)
}

/// The result of one cell for the report.
#[derive(Clone, Debug)]
pub struct CellResult {
    /// The optimizer's label.
    pub optimizer: String,
    /// Batch size.
    pub batch: usize,
    /// Where the cell stands.
    pub state: CellState,
    /// Outcomes of the best setting, one per seed (in `seeds` order).
    pub seeds: Vec<Outcome>,
    /// Tuning runs finished.
    pub tuning_runs: usize,
}

impl CellResult {
    /// Median steps to the target over the seeds, a miss counting as more than any step
    /// count (`None`: the median run missed, or not finished).
    pub fn median_steps(&self) -> Option<usize> {
        median_of(&self.seeds, |o| o.steps().map(|s| s as f64)).map(|x| x as usize)
    }

    /// Median seconds to the target over the seeds (misses count as slowest).
    pub fn median_seconds(&self) -> Option<f64> {
        median_of(&self.seeds, |o| match o {
            Outcome::Reached { seconds, .. } => Some(*seconds),
            _ => None,
        })
    }

    /// Median epochs to the target over the seeds.
    pub fn median_epochs(&self) -> Option<f64> {
        median_of(&self.seeds, |o| match o {
            Outcome::Reached { epochs, .. } => Some(*epochs),
            _ => None,
        })
    }

    /// Seeds that reached the target, of those finished.
    pub fn reached(&self) -> (usize, usize) {
        let done = self
            .seeds
            .iter()
            .filter(|o| **o != Outcome::Pending)
            .count();
        let ok = self.seeds.iter().filter(|o| o.steps().is_some()).count();
        (ok, done)
    }

    /// (min, max) steps over the seeds that reached the target.
    pub fn steps_range(&self) -> Option<(usize, usize)> {
        let s: Vec<usize> = self.seeds.iter().filter_map(Outcome::steps).collect();
        Some((*s.iter().min()?, *s.iter().max()?))
    }
}

/// The median of `f` over `outs` when all are finished, a miss (`f` = `None`) ranking last.
fn median_of(outs: &[Outcome], f: impl Fn(&Outcome) -> Option<f64>) -> Option<f64> {
    if outs.is_empty() || outs.contains(&Outcome::Pending) {
        return None;
    }
    let mut v: Vec<f64> = outs.iter().map(|o| f(o).unwrap_or(f64::INFINITY)).collect();
    v.sort_by(f64::total_cmp);
    let m = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    m.is_finite().then_some(m)
}

/// Every cell's result, from the run directories in `dir/runs`.
pub fn collect(spec: &TargetSpec, dir: &Path) -> Vec<CellResult> {
    let runs_dir = dir.join("runs");
    let outcome = |r: &TargetRun| read_outcome(&runs_dir.join(&r.id));
    spec.plan(&outcome)
        .into_iter()
        .map(|c| {
            let seeds = match &c.state {
                CellState::Settled { best, .. } => spec
                    .seeds
                    .iter()
                    .map(|&s| outcome(&spec.run(c.opt, c.batch, best.mult, best.warmup, s)))
                    .collect(),
                _ => vec![],
            };
            let tuning_runs = c
                .runs
                .iter()
                .filter(|r| r.seed == spec.seeds[0] && outcome(r) != Outcome::Pending)
                .count();
            CellResult {
                optimizer: spec.optimizers[c.opt].label(),
                batch: c.batch,
                state: c.state,
                seeds,
                tuning_runs,
            }
        })
        .collect()
}

/// How far above the perfect-scaling line a cell may lie and still count as scaling
/// perfectly: 1.5x the steps that halving per doubled batch predicts.
pub const PERFECT_SCALING_SLACK: f64 = 1.5;

/// For one optimizer's cells (in batch order): the first batch size whose median steps exceed
/// [`PERFECT_SCALING_SLACK`] times the perfect-scaling prediction from the smallest batch size
/// that reached the target, or that did not reach it; `None` when every cell scales.
pub fn leaves_perfect_scaling(cells: &[&CellResult]) -> Option<usize> {
    let (b0, s0) = cells
        .iter()
        .find_map(|c| c.median_steps().map(|s| (c.batch, s)))?;
    cells
        .iter()
        .filter(|c| c.batch > b0)
        .find(|c| match c.median_steps() {
            Some(s) => s as f64 > PERFECT_SCALING_SLACK * s0 as f64 * b0 as f64 / c.batch as f64,
            None => true,
        })
        .map(|c| c.batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_count_misses_as_slowest_and_scaling_is_judged_from_the_smallest_batch() {
        let reached = |step| Outcome::Reached {
            step,
            seconds: 1.0,
            epochs: 1.0,
        };
        let cell = |batch, seeds: Vec<Outcome>| CellResult {
            optimizer: "lamb".into(),
            batch,
            state: CellState::NoneReached,
            seeds,
            tuning_runs: 3,
        };
        let c = cell(100, vec![reached(300), Outcome::Missed, reached(100)]);
        assert_eq!(c.median_steps(), Some(300));
        assert_eq!(c.reached(), (2, 3));
        let c2 = cell(100, vec![Outcome::Missed, Outcome::Missed, reached(100)]);
        assert_eq!(c2.median_steps(), None);
        let a = cell(100, vec![reached(1000)]);
        let b = cell(200, vec![reached(600)]);
        let d = cell(400, vec![reached(400)]);
        assert_eq!(leaves_perfect_scaling(&[&a, &b, &d]), Some(400));
        assert_eq!(leaves_perfect_scaling(&[&a, &b]), None);
    }
}
