//! The error type of data-parallel training.

/// Errors of `lamb-dist`. Each says what was wrong, where, and what is valid.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The engine failed (data, optimizer, non-finite loss, callback).
    #[error(transparent)]
    Nn(#[from] lamb_nn::NnError),
    /// An argument is outside its valid range.
    #[error("invalid argument `{name}` = {value}: {valid}")]
    InvalidArgument {
        /// Argument name.
        name: &'static str,
        /// The value given, formatted.
        value: String,
        /// The valid range, in words.
        valid: String,
    },
    /// A collective operation was given buffers that cannot work (lengths, root rank).
    #[error("{op} on rank {rank}: {message}")]
    Collective {
        /// The operation (`all-reduce`, `broadcast`).
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// What is wrong.
        message: String,
    },
    /// The ranks disagree about something that must be identical (weights, data sizes).
    #[error("ranks out of sync: {0}")]
    OutOfSync(String),
    /// MPI is needed but this build lacks the `mpi` feature, or MPI could not start.
    #[error("MPI unavailable: {0}")]
    MpiUnavailable(String),
    /// Starting `mpirun` failed.
    #[error("could not start `{program}`: {source}; install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev) or put mpirun on PATH")]
    Launch {
        /// The launcher that was run.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Optimizer state could not be (de)serialised while syncing ranks.
    #[error("optimizer state broadcast: {0}")]
    State(String),
}
