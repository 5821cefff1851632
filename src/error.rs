//! Typed errors of the library. Every variant names what it is about: the
//! file, the field or the tensor, and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The OS message is part of the text, not a `source`: printing the
    // error chain would otherwise repeat it.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path}: invalid TOML: {message}")]
    Toml { path: PathBuf, message: String },

    #[error("{path}: invalid JSON: {error}")]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },

    /// A search space that parsed but does not make sense.
    #[error("{file}: invalid search space, field `{field}`: {message}")]
    InvalidSpace {
        file: String,
        field: String,
        message: String,
    },

    /// An architecture that does not belong to (or does not fit) a space.
    #[error("architecture not in space `{space}`, field `{field}`: {message}")]
    InvalidArch {
        space: String,
        field: String,
        message: String,
    },

    /// A tensor with the wrong shape, or a missing tensor.
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },

    /// A recipe that parsed but does not make sense.
    #[error("{file}: invalid recipe, field `{field}`: {message}")]
    InvalidRecipe {
        file: String,
        field: String,
        message: String,
    },

    /// A configuration value (search settings, model config.json, rank
    /// settings) that parsed but does not make sense: the file, the field
    /// and the problem.
    #[error("{file}: invalid value of `{field}`: {message}")]
    InvalidConfig {
        file: String,
        field: String,
        message: String,
    },

    /// A checkpoint that cannot be read or does not match the model.
    /// A latency dataset or predictor that cannot be used.
    #[error("{path}: {message}")]
    Latency { path: PathBuf, message: String },

    /// An accuracy dataset or predictor that cannot be used.
    #[error("{path}: {message}")]
    Predictor { path: PathBuf, message: String },

    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// A model that the ONNX export cannot express (the reason).
    #[error("ONNX export: {message}")]
    OnnxExport { message: String },

    /// An output directory that must not be written: it holds another
    /// artifact, it is the input, or another process is using it.
    #[error("{dir}: {message}")]
    OutputDir { dir: PathBuf, message: String },

    /// Training stopped: a loss was NaN or infinite.
    #[error("non-finite loss at step {step} ({which}): {value}; {kept}")]
    NonFiniteLoss {
        step: usize,
        which: String,
        value: f32,
        /// Which checkpoint is on disk (or that none is).
        kept: String,
    },

    /// A dataset file or directory that cannot be used.
    #[error("{source_name}: {message}")]
    Data {
        source_name: String,
        message: String,
    },

    /// One line of a data file that cannot be used: the file, the 1-based
    /// line (where a CSV record starts) and what is wrong with it.
    #[error("{path}:{line}: {message}")]
    DataLine {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// The ranks of a distributed job (`mpirun`) disagree, or the job
    /// cannot run as asked: what differs, and what to do.
    #[error("distributed run: {message}")]
    Distributed { message: String },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }
}
