//! Running a sweep's grid as `lamb train` child processes: a fixed number at a time (so the
//! cores are not oversubscribed), each in its own run directory with its log, skipping runs
//! that already finished and resuming interrupted ones from their checkpoints.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::spec::{RunPlan, SweepSpec};
use super::status::{RunStatus, STATUS_FILE};
use lamb_run::lock::EXIT_LOCKED;
use lamb_run::{LockError, RunLock};

use crate::atomic::write_atomic;
use crate::config::ScheduleKind;

/// The child's output (appended to on resume).
pub use lamb_run::rundir::LOG_FILE;

/// How the sweep runs its children.
#[derive(Clone, Debug)]
pub struct Execution {
    /// The sweep directory (runs go to `<dir>/runs/<id>`).
    pub dir: PathBuf,
    /// Data location passed to every run (`None`: the default search).
    pub data: Option<PathBuf>,
    /// Engine threads per run.
    pub threads: usize,
    /// Runs at the same time.
    pub jobs: usize,
    /// Run again the runs recorded as failed (otherwise they are kept as results).
    pub retry_failed: bool,
}

/// Counts of what one invocation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Runs that were already finished (completed or failed) and skipped.
    pub skipped: usize,
    /// Runs completed now.
    pub completed: usize,
    /// Runs that failed now (e.g. diverged).
    pub failed: usize,
    /// Runs stopped by Ctrl-C (resumable) or not started because of it.
    pub interrupted: usize,
    /// Runs left alone because another process (another sweep worker) holds their directory.
    pub elsewhere: usize,
}

enum Start {
    Fresh,
    Resume,
}

/// One run of a sweep: its directory name under `<sweep>/runs/` and the `lamb train`
/// arguments of a fresh start (an interrupted run resumes with `--resume` instead).
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Directory name under `<sweep>/runs/`.
    pub id: String,
    /// `lamb train ...` arguments of a fresh start.
    pub args: Vec<String>,
}

/// The jobs of a fixed grid's plans.
pub fn grid_jobs(spec: &SweepSpec, plans: &[RunPlan], ex: &Execution) -> Vec<Job> {
    plans
        .iter()
        .map(|p| Job {
            id: p.id.clone(),
            args: train_args(spec, p, &ex.dir.join("runs").join(&p.id), ex),
        })
        .collect()
}

/// Runs every job not yet finished; returns what happened. `stop` (set by Ctrl-C) stops
/// launching runs and asks the running children to checkpoint and exit.
pub fn run_grid(plans: &[Job], ex: &Execution, stop: &AtomicBool) -> Result<Tally> {
    let exe = std::env::current_exe().context("finding the lamb executable to run the grid")?;
    let runs = ex.dir.join("runs");
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let mut todo = Vec::new();
    let mut tally = Tally::default();
    for p in plans {
        let d = runs.join(&p.id);
        if RunLock::is_held(&d) {
            // Another sweep worker (or a `lamb train` by hand) is running it.
            tally.elsewhere += 1;
            continue;
        }
        match RunStatus::read(&d) {
            Some(s) if s.completed() || !ex.retry_failed => {
                tally.skipped += 1;
                continue;
            }
            Some(_) => {
                if !remove_unless_held(&d, "failed run, to retry it")? {
                    tally.elsewhere += 1;
                    continue;
                }
                todo.push((p, Start::Fresh));
            }
            None if d.join(crate::checkpoint::FILE).is_file() => todo.push((p, Start::Resume)),
            None => {
                // Stopped before its first checkpoint: nothing to keep.
                if d.exists() && !remove_unless_held(&d, "unfinished run")? {
                    tally.elsewhere += 1;
                    continue;
                }
                todo.push((p, Start::Fresh));
            }
        }
    }
    if tally.elsewhere > 0 {
        println!(
            "{} run(s) are held by another process (another sweep worker?) and left to it",
            tally.elsewhere
        );
    }
    if tally.skipped > 0 {
        println!(
            "{} of {} runs already finished (kept); {} to run, {} at a time, {} thread(s) each",
            tally.skipped,
            plans.len(),
            todo.len(),
            ex.jobs,
            ex.threads
        );
    } else {
        println!(
            "{} runs, {} at a time, {} thread(s) each",
            todo.len(),
            ex.jobs,
            ex.threads
        );
    }
    let next = AtomicUsize::new(0);
    let shared = Mutex::new(tally);
    let total = todo.len();
    let error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..ex.jobs.max(1) {
            s.spawn(|| loop {
                if stop.load(Ordering::SeqCst) || error.lock().map_or(true, |e| e.is_some()) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((p, start)) = todo.get(i) else {
                    return;
                };
                let res = run_one(&exe, p, start, ex, stop, i + 1, total);
                let mut t = shared.lock().unwrap_or_else(|e| e.into_inner());
                match res {
                    Ok(Ended::Completed) => t.completed += 1,
                    Ok(Ended::Failed) => t.failed += 1,
                    Ok(Ended::Interrupted) => t.interrupted += 1,
                    Ok(Ended::Elsewhere) => t.elsewhere += 1,
                    Err(e) => {
                        if let Ok(mut slot) = error.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut t = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    let started = t.completed + t.failed + t.interrupted + t.elsewhere;
    t.interrupted += total.saturating_sub(started);
    Ok(t)
}

enum Ended {
    Completed,
    Failed,
    Interrupted,
    /// Another process took the run directory first.
    Elsewhere,
}

/// Removes `dir` while holding its lock; `false` (nothing removed) when another process holds
/// it. `what` says what it is, for errors.
fn remove_unless_held(dir: &Path, what: &str) -> Result<bool> {
    let _lock = match RunLock::acquire(dir) {
        Ok(l) => l,
        Err(LockError::Held { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {what} {}", dir.display()))?;
    Ok(true)
}

/// The `lamb train` arguments of a fresh run.
pub fn train_args(spec: &SweepSpec, p: &RunPlan, out: &Path, ex: &Execution) -> Vec<String> {
    let o = &spec.optimizers[p.opt];
    let mut a: Vec<String> = vec![
        "train".into(),
        "--out".into(),
        out.display().to_string(),
        "--optimizer".into(),
        o.optimizer.as_str().into(),
        "--batch-size".into(),
        p.batch.to_string(),
        "--lr".into(),
        format!("{}", p.lr),
        "--epochs".into(),
        spec.epochs.to_string(),
        "--seed".into(),
        spec.seed.to_string(),
        "--schedule".into(),
        spec.schedule.as_str().into(),
        "--warmup-epochs".into(),
        format!("{}", spec.warmup_epochs),
        "--activation".into(),
        spec.activation.as_str().into(),
    ];
    if spec.schedule == ScheduleKind::Poly {
        a.extend(["--decay-power".into(), format!("{}", spec.decay_power)]);
    }
    let mut opt = |flag: &str, v: Option<String>| {
        if let Some(v) = v {
            a.extend([flag.to_string(), v]);
        }
    };
    opt("--model", spec.model.clone());
    opt("--limit-train", spec.train_images.map(|x| x.to_string()));
    opt("--limit-test", spec.test_images.map(|x| x.to_string()));
    o.push_args(&mut a);
    common_args(&mut a, ex);
    a
}

/// The arguments every run of a sweep gets (threads, quiet, data, TensorBoard).
pub fn common_args(a: &mut Vec<String>, ex: &Execution) {
    // The sweep found (or downloaded) the data once before starting any run.
    a.extend([
        "--threads".into(),
        ex.threads.to_string(),
        "--quiet".into(),
        "--no-download".into(),
    ]);
    a.extend(crate::tensorboard::child_args());
    if let Some(d) = &ex.data {
        a.extend(["--data".into(), d.display().to_string()]);
    }
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    exe: &Path,
    p: &Job,
    start: &Start,
    ex: &Execution,
    stop: &AtomicBool,
    index: usize,
    total: usize,
) -> Result<Ended> {
    let dir = ex.dir.join("runs").join(&p.id);
    let args = match start {
        Start::Fresh => p.args.clone(),
        Start::Resume => {
            let mut a = vec![
                "train".to_string(),
                "--resume".into(),
                dir.display().to_string(),
            ];
            common_args(&mut a, ex);
            a
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let err_log = log.try_clone().context("duplicating the log handle")?;
    println!(
        "[{index:>3}/{total}] {} {}",
        if matches!(start, Start::Resume) {
            "resume"
        } else {
            "start "
        },
        p.id
    );
    let began = Instant::now();
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        // Own process group: a terminal Ctrl-C reaches only the sweep, which then asks each
        // child once to checkpoint (a second SIGINT would make the child exit at once).
        .process_group(0);
    // A sweep worker started by an MPI launcher (one worker per host) runs single-process
    // trainers: they must not take the launcher's rank variables for their own.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if ["OMPI_", "PMIX_", "PMI_"].iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(k.as_ref());
        }
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl(2), getppid(2) and kill(2) are async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            // When the sweep dies in any way (even SIGKILL), the child gets SIGUSR1: it
            // checkpoints and exits, so no trainer outlives its sweep. Not SIGTERM: the
            // signal comes again each time the child is handed to another of the dying
            // sweep's threads, and a second SIGTERM means "exit now", a second SIGUSR1 nothing.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The sweep may have died before the prctl took effect.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGUSR1);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
    let mut asked = false;
    let status = loop {
        if let Some(s) = child.try_wait().context("waiting for a run")? {
            break s;
        }
        if stop.load(Ordering::SeqCst) && !asked {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
            asked = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let secs = began.elapsed().as_secs_f64();
    let code = status.code();
    if code == Some(i32::from(EXIT_LOCKED)) {
        println!(
            "[{index:>3}/{total}] skip   {} (another process holds it)",
            p.id
        );
        return Ok(Ended::Elsewhere);
    }
    if code == Some(0) && dir.join("weights.safetensors").is_file() {
        write_status(&dir, "completed", code, String::new())?;
        println!(
            "[{index:>3}/{total}] done   {} in {:.0} s{}",
            p.id,
            secs,
            super::report::one_line(&dir)
        );
        return Ok(Ended::Completed);
    }
    if asked || code.is_none() || code == Some(130) {
        println!("[{index:>3}/{total}] stopped {} (resumable)", p.id);
        return Ok(Ended::Interrupted);
    }
    let message = tail(&log_path, 4);
    if !dir.join("config.toml").is_file() {
        // It never started training (bad data path, bad settings): every run would fail the
        // same way, so the sweep stops instead of recording it as a result.
        bail!(
            "run {} could not start (exit {}); the sweep stops. Its output ({}):\n{}",
            p.id,
            code.map_or("?".into(), |c| c.to_string()),
            log_path.display(),
            message
        );
    }
    write_status(&dir, "failed", code, message.clone())?;
    println!(
        "[{index:>3}/{total}] FAILED {} (exit {}): {}",
        p.id,
        code.map_or("?".into(), |c| c.to_string()),
        message.lines().last().unwrap_or("")
    );
    Ok(Ended::Failed)
}

fn write_status(dir: &Path, state: &str, exit_code: Option<i32>, message: String) -> Result<()> {
    let s = RunStatus {
        state: state.into(),
        exit_code,
        message,
    };
    write_atomic(
        &dir.join(STATUS_FILE),
        serde_json::to_string_pretty(&s)?.as_bytes(),
    )
}

/// The last `n` non-empty lines of a text file (empty if unreadable).
fn tail(path: &Path, n: usize) -> String {
    // The end of the log only (a diverged run's message is in its last lines).
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = std::io::Seek::seek(
        &mut f,
        std::io::SeekFrom::Start(len.saturating_sub(64 << 10)),
    );
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::Read::take(f, 64 << 10), &mut raw);
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
