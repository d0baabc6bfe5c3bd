//! Helpers shared by the end-to-end tests: the binary, the shared data, a decode cache.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `lamb` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_lamb");

/// The shared archive, or `None` (skip) when it is missing outside CI.
pub fn data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cifar10-jpeg.tar.gz");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI: the shared data is missing at {}", p.display());
    }
    eprintln!("skipping: CIFAR-10 archive expected at {}", p.display());
    None
}

/// A decode cache shared by the tests (the archive is decoded once).
pub fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("lamb-test-cache")
}

/// `program` in `cwd` with the test environment: the shared cache, no `LAMB_DATA`, and Open
/// MPI allowed to run as root (CI runs as root).
pub fn command(program: &str, cwd: &Path) -> Command {
    let mut c = Command::new(program);
    c.current_dir(cwd)
        .env("LAMB_CACHE", cache())
        .env_remove("LAMB_DATA")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

/// `lamb` run in `cwd` with the test environment.
pub fn lamb(cwd: &Path) -> Command {
    command(BIN, cwd)
}

/// Runs `c`, failing the test on a panic message.
pub fn run(c: &mut Command) -> Output {
    let o = c.output().expect("running lamb");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "lamb panicked:\n{err}");
    o
}

/// Runs `c` and requires success.
pub fn ok(c: &mut Command) -> Output {
    let o = run(c);
    assert!(
        o.status.success(),
        "lamb failed ({:?}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Standard output of a finished command, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `c` and requires failure; returns stderr.
pub fn fail(c: &mut Command) -> String {
    let o = run(c);
    assert!(
        !o.status.success(),
        "lamb should have failed:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `lamb` process held at a known point by its hidden pause hook (`LAMB_TEST_PAUSE_AT`):
/// signals sent to it land exactly there, however fast or loaded the machine is.
pub struct Paused {
    /// The process.
    pub child: std::process::Child,
    /// Its standard error, line by line (read on a thread).
    pub stderr: std::sync::mpsc::Receiver<String>,
    /// Its standard error up to the pause line.
    pub before: String,
}

/// Spawns `c` with `LAMB_TEST_PAUSE_AT=at` (`load`, or a global step from 1) and waits until
/// it announces on stderr that it has reached that point.
pub fn spawn_paused(c: &mut Command, at: &str) -> Paused {
    use std::io::BufRead;
    let mut child = c
        .env("LAMB_TEST_PAUSE_AT", at)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting lamb");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut before = String::new();
    loop {
        // Ends with an error when the process closes stderr without pausing.
        let line = rx
            .recv()
            .unwrap_or_else(|_| panic!("lamb never reached the pause point {at}:\n{before}"));
        if line.starts_with("LAMB_TEST_PAUSED") {
            break;
        }
        before.push_str(&line);
        before.push('\n');
    }
    Paused {
        child,
        stderr: rx,
        before,
    }
}

impl Paused {
    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill failed");
    }

    /// Waits for the process to end; its exit status and the rest of its stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let rest: Vec<String> = self.stderr.iter().collect();
        let err = rest.join("\n");
        assert!(!err.contains("panicked"), "lamb panicked:\n{err}");
        (status, err)
    }
}

/// Blocks until process `pid` (not necessarily our child) has ended, through a pidfd that
/// becomes readable at its exit: no polling.
pub fn wait_exit(pid: i32) {
    // SAFETY: pidfd_open(2) and poll(2) on a descriptor we own, closed afterwards.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd < 0 {
            return; // already gone (and reaped)
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        while libc::poll(&mut p, 1, -1) < 0 {}
        libc::close(fd);
    }
}

/// A FIFO that paused `lamb` processes announce themselves on (`LAMB_TEST_PAUSE_NOTIFY`),
/// read without polling; [`Watched`] processes write `EXITED` to it when they end, so a reader
/// never waits for a pause that cannot come.
pub struct PauseFifo {
    /// The FIFO's path (give it as `LAMB_TEST_PAUSE_NOTIFY`).
    pub path: PathBuf,
    reader: std::io::BufReader<std::fs::File>,
}

impl PauseFifo {
    /// Makes a FIFO in `dir`, held open for reading and writing (so opening it never blocks).
    pub fn new(dir: &Path) -> PauseFifo {
        let path = dir.join("pause.fifo");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        PauseFifo {
            path,
            reader: std::io::BufReader::new(f),
        }
    }

    /// The next announcement (`LAMB_TEST_PAUSED ...`); panics when a watched process ended
    /// first.
    pub fn next(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("LAMB_TEST_PAUSED"),
            "the process ended before it paused: {line}"
        );
        line
    }
}

/// A spawned process whose end is reported on a [`PauseFifo`] and a channel.
pub struct Watched {
    /// Its PID.
    pub pid: i32,
    status: std::sync::mpsc::Receiver<std::process::ExitStatus>,
}

/// Spawns `c`; a thread waits for it and then writes `EXITED` to `fifo`.
pub fn spawn_watched(c: &mut Command, fifo: &Path) -> Watched {
    let mut child = c.spawn().expect("starting lamb");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        let status = child.wait().unwrap();
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&fifo) {
            let _ = std::io::Write::write_all(&mut f, b"EXITED\n");
        }
        let _ = tx.send(status);
    });
    Watched { pid, status: rx }
}

impl Watched {
    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid, sig) }, 0, "kill failed");
    }

    /// Waits for the process to end; its exit status.
    pub fn wait(self) -> std::process::ExitStatus {
        self.status.recv().unwrap()
    }
}

/// Writes an official-layout directory: `per_file` records in each training batch, 10 test
/// records, pseudo-random pixels, labels cycling over 0..9.
pub fn official(dir: &Path, per_file: usize) {
    official_seeded(dir, per_file, 0x2545_f491);
}

/// [`official`] with pixels from another pseudo-random `seed` (other data, same shape).
pub fn official_seeded(dir: &Path, per_file: usize, seed: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = seed;
    let mut records = |n: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(n * 3073);
        for i in 0..n {
            out.push((i % 10) as u8);
            for _ in 0..3072 {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                out.push((state >> 24) as u8);
            }
        }
        out
    };
    for k in 1..=5 {
        let name = format!("data_batch_{k}.bin");
        std::fs::write(dir.join(name), records(per_file)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), records(10)).unwrap();
}
