//! The report of a steps-to-target sweep: `steps_to_target.md` (table of best settings, steps
//! and seconds to the target, where each optimizer leaves perfect scaling, what the data
//! supports), `steps_to_target.csv` (every cell) and the log-log plots.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::target::{
    collect, leaves_perfect_scaling, CellResult, CellState, Outcome, TargetSpec,
    PERFECT_SCALING_SLACK,
};
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
