//! Starting ranks: detect being run under `mpirun`, and re-execute the current program under
//! `mpirun -np N` (what `lamb train --workers N` does).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::DistError;

/// Environment variables a launcher sets in every rank (Open MPI, PMIx, MPICH/Hydra).
const RANK_VARS: [&str; 4] = [
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "PMIX_RANK",
    "PMI_RANK",
];

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun` with PMIx).
pub fn launched_by_mpirun() -> bool {
    RANK_VARS.iter().any(|v| std::env::var_os(v).is_some())
}

/// The world size the launcher announced (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`), if any.
pub fn launcher_world_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Whether this build can talk MPI (the `mpi` feature).
pub const MPI_ENABLED: bool = cfg!(feature = "mpi");

/// How to start the ranks of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// Number of ranks (`mpirun -np`).
    pub workers: usize,
    /// Rayon threads per rank (exported as `RAYON_NUM_THREADS`); `None`: keep the caller's
    /// `RAYON_NUM_THREADS` if set, else this machine's cores divided by `workers` (at least 1).
    pub threads_per_worker: Option<usize>,
    /// The launcher program (default `mpirun`, or `$LAMB_MPIRUN`).
    pub mpirun: OsString,
    /// Extra launcher arguments before the program (e.g. `--hostfile hosts`), from
    /// `$LAMB_MPIRUN_ARGS` (split on whitespace) by default.
    pub launcher_args: Vec<OsString>,
}

impl Launch {
    /// `workers` ranks on this machine with the defaults described on each field.
    pub fn new(workers: usize) -> Self {
        Launch {
            workers,
            threads_per_worker: None,
            mpirun: std::env::var_os("LAMB_MPIRUN").unwrap_or_else(|| "mpirun".into()),
            launcher_args: std::env::var("LAMB_MPIRUN_ARGS")
                .map(|s| s.split_whitespace().map(OsString::from).collect())
                .unwrap_or_default(),
        }
    }

    fn threads(&self) -> usize {
        if let Some(t) = self.threads_per_worker {
            return t.max(1);
        }
        if let Some(t) = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        {
            if t > 0 {
                return t;
            }
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        (cores / self.workers.max(1)).max(1)
    }

    /// The `mpirun` command that starts `program args` on `workers` ranks: `--oversubscribe`
    /// (more ranks than slots is allowed), `--bind-to none` (each rank runs a thread pool),
    /// `RAYON_NUM_THREADS` exported to every rank, and when running as root
    /// `--allow-run-as-root` (Open MPI refuses root otherwise).
    pub fn command(&self, program: &OsStr, args: &[OsString]) -> Result<Command, DistError> {
        if self.workers == 0 {
            return Err(DistError::InvalidArgument {
                name: "workers",
                value: "0".into(),
                valid: "at least 1".into(),
            });
        }
        let mut c = Command::new(&self.mpirun);
        c.arg("-np").arg(self.workers.to_string());
        c.args(["--oversubscribe", "--bind-to", "none"]);
        if running_as_root() {
            c.arg("--allow-run-as-root");
            c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        }
        c.env("RAYON_NUM_THREADS", self.threads().to_string());
        c.args(["-x", "RAYON_NUM_THREADS"]);
        c.args(&self.launcher_args);
        c.arg(program).args(args);
        Ok(c)
    }

    /// Runs the current executable with `args` (without the program name) under `mpirun` and
    /// waits for it; the caller should exit with the returned status. `mpirun` runs in its own
    /// process group, so a terminal's Ctrl-C reaches only this process: when `stop` becomes
    /// true, `mpirun` gets SIGUSR1, which it forwards to every rank (ranks should treat SIGUSR1
    /// as "stop at the next step and checkpoint"), and `stop` is cleared; if `stop` becomes
    /// true again, `mpirun` gets SIGTERM (it then ends every rank at once). Register the signal
    /// handlers for `stop` without an exit-on-second-signal shutdown in this process.
    pub fn run_current_exe(
        &self,
        args: &[OsString],
        stop: Option<&AtomicBool>,
    ) -> Result<ExitStatus, DistError> {
        if !MPI_ENABLED {
            return Err(DistError::MpiUnavailable(
                "this build has no MPI support; rebuild with `--features mpi` (needs libopenmpi-dev and libclang)".into(),
            ));
        }
        let exe: PathBuf = std::env::current_exe().map_err(|source| DistError::Launch {
            program: "the current executable".into(),
            source,
        })?;
        let mut c = self.command(exe.as_os_str(), args)?;
        let launch_err = |source| DistError::Launch {
            program: self.mpirun.to_string_lossy().into_owned(),
            source,
        };
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let mut child = c.spawn().map_err(launch_err)?;
        let mut forwarded = 0;
        loop {
            if let Some(status) = child.try_wait().map_err(launch_err)? {
                return Ok(status);
            }
            if let Some(stop) = stop {
                if stop.swap(false, Ordering::SeqCst) {
                    forwarded += 1;
                    signal(
                        child.id(),
                        if forwarded == 1 {
                            Signal::Stop
                        } else {
                            Signal::Terminate
                        },
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

enum Signal {
    Stop,
    Terminate,
}

fn signal(pid: u32, s: Signal) {
    #[cfg(unix)]
    {
        let sig = match s {
            Signal::Stop => libc::SIGUSR1,
            Signal::Terminate => libc::SIGTERM,
        };
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (pid, s);
    }
}

/// Whether this process runs as root (Linux: owner of `/proc/self`).
pub fn running_as_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// `args` without a `flag` option and its value (`--workers 4` or `--workers=4`), for
/// re-executing the program under `mpirun` without it. Arguments after `--` are kept as is.
pub fn strip_option(args: &[OsString], flag: &str) -> Vec<OsString> {
    let eq = format!("{flag}=");
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a.clone());
            out.extend(it.cloned());
            break;
        }
        if a == flag {
            it.next();
            continue;
        }
        if a.to_str().is_some_and(|s| s.starts_with(&eq)) {
            continue;
        }
        out.push(a.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn strips_workers_in_both_forms() {
        assert_eq!(
            strip_option(
                &os(&["train", "--workers", "2", "--epochs", "3"]),
                "--workers"
            ),
            os(&["train", "--epochs", "3"])
        );
        assert_eq!(
            strip_option(&os(&["train", "--workers=4", "-q"]), "--workers"),
            os(&["train", "-q"])
        );
        assert_eq!(
            strip_option(&os(&["a", "--", "--workers", "2"]), "--workers"),
            os(&["a", "--", "--workers", "2"])
        );
        assert_eq!(
            strip_option(&os(&["--workers-x", "1"]), "--workers"),
            os(&["--workers-x", "1"])
        );
    }

    #[test]
    fn command_line() {
        let mut l = Launch::new(3);
        l.threads_per_worker = Some(2);
        l.mpirun = "mpirun".into();
        l.launcher_args = os(&["--hostfile", "hosts"]);
        let c = l
            .command(OsStr::new("/bin/lamb"), &os(&["train", "--epochs", "1"]))
            .unwrap();
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let s = args.join(" ");
        assert!(s.starts_with("-np 3 --oversubscribe --bind-to none"), "{s}");
        assert!(
            s.ends_with("-x RAYON_NUM_THREADS --hostfile hosts /bin/lamb train --epochs 1"),
            "{s}"
        );
        assert_eq!(running_as_root(), s.contains("--allow-run-as-root"));
        let env: Vec<_> = c
            .get_envs()
            .filter(|(k, _)| *k == "RAYON_NUM_THREADS")
            .map(|(_, v)| v.map(|v| v.to_os_string()))
            .collect();
        assert_eq!(env, vec![Some(OsString::from("2"))]);
        l.workers = 0;
        assert!(l.command(OsStr::new("x"), &[]).is_err());
    }
}
