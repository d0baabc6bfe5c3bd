//! How a sweep's run ended, as recorded in its run directory: written by the runner
//! ([`super::exec`]), read by the runner (to skip finished runs) and the report
//! ([`super::report`]), so that neither of those two needs the other for it.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// File in each run directory recording how the sweep's child ended (absent: not finished).
pub const STATUS_FILE: &str = "sweep-status.json";

/// How a run ended, as recorded in [`STATUS_FILE`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// `completed` or `failed`.
    pub state: String,
    /// Exit status of the child's last invocation.
    pub exit_code: Option<i32>,
    /// Last lines of the log for failures (e.g. the divergence message), empty otherwise.
    pub message: String,
}

impl RunStatus {
    /// Reads a run directory's status file (`None` when absent or unreadable: not finished).
    pub fn read(run_dir: &Path) -> Option<RunStatus> {
        let path = run_dir.join(STATUS_FILE);
        let bytes = lamb_data::read_capped(&path, 1 << 20).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether the run completed all its epochs.
    pub fn completed(&self) -> bool {
        self.state == "completed"
    }
}
