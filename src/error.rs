//! One error type for the whole core. The binding layer maps each variant to one Python
//! exception class, so every message here is written for the person who called `fit`.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Bad data or a bad argument (Python `ValueError`).
    InvalidInput(String),
    /// Wrong array type or an argument of the wrong kind (Python `TypeError`).
    InvalidType(String),
    /// A file could not be read or written (Python `OSError`).
    Io(String),
    /// A model file that is truncated, corrupted or from another format version (Python `ValueError`).
    BadModelFile(String),
    /// The loss or a gradient stopped being finite; the model keeps the last good weights.
    Diverged(String),
    /// The user interrupted a long call (Python `KeyboardInterrupt` is re-raised by the binding).
    Interrupted,
    /// What was asked needs something this machine lacks, e.g. a CUDA GPU (Python `RuntimeError`).
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput(m)
            | Error::InvalidType(m)
            | Error::Io(m)
            | Error::BadModelFile(m)
            | Error::Diverged(m)
            | Error::Unavailable(m) => f.write_str(m),
            Error::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for the most common error: `invalid!("row {} has ...", r)`.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::Error::InvalidInput(format!($($arg)*)) };
}
