//! A policy that could not be read or parsed.

use std::{
    io,
    path::{Path, PathBuf},
};

/// A policy that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("cannot read the policy file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The text is not TOML, or has a top-level key other than `rules`.
    #[error("the policy is not valid TOML: {0}")]
    Toml(#[source] toml::de::Error),
    /// A rule is malformed.
    #[error("policy rule {rule}: {problem}")]
    Rule {
        /// The rule's 1-based number in the file.
        rule: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// A `[[quotas]]` entry is malformed.
    #[error("policy quota {quota}: {problem}")]
    Quota {
        /// The entry's 1-based number among the `[[quotas]]`.
        quota: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// The policy file at `path` is invalid.
    #[error("policy file {}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its contents.
        #[source]
        source: Box<PolicyError>,
    },
}

impl PolicyError {
    /// This error, as found in the policy file at `path` (for callers that read the file
    /// themselves, as the reloader does). An error already naming a file is left as it is.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            Self::Read { .. } | Self::InFile { .. } => self,
            Self::Toml(_) | Self::Rule { .. } | Self::Quota { .. } => Self::InFile {
                path: path.into(),
                source: Box::new(self),
            },
        }
    }

    /// The 1-based number of the malformed rule, when one rule is to blame.
    pub fn rule(&self) -> Option<usize> {
        match self {
            Self::Rule { rule, .. } => Some(*rule),
            Self::InFile { source, .. } => source.rule(),
            Self::Read { .. } | Self::Toml(_) | Self::Quota { .. } => None,
        }
    }

    /// The policy file, when the policy came from one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Read { path, .. } | Self::InFile { path, .. } => Some(path),
            Self::Toml(_) | Self::Rule { .. } | Self::Quota { .. } => None,
        }
    }
}
