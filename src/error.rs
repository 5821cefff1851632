//! Typed errors of the library. Every variant names what it is about: the
//! file, the field or the tensor, and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid TOML: {message}")]
    Toml { path: PathBuf, message: String },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
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

    /// A checkpoint that cannot be read or does not match the model.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// Training stopped: a loss was NaN or infinite.
    #[error("non-finite loss at step {step} ({which}): {value}; the last good checkpoint is kept")]
    NonFiniteLoss {
        step: usize,
        which: String,
        value: f32,
    },

    /// A dataset file or directory that cannot be used.
    #[error("{source_name}: {message}")]
    Data {
        source_name: String,
        message: String,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
