//! Profile errors: each names the file and, where the TOML parser gives a
//! span, the line and column.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A place in a profile file, 1-based, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (`builtin:NAME.toml` for built-ins).
    pub file: String,
    /// Line.
    pub line: usize,
    /// Column, in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Neither a file nor a built-in of that name exists.
    #[error(
        "{from}profile {spec:?} not found (looked in: {looked})",
        from = .from.as_ref().map(|l| format!("{l}: ")).unwrap_or_default(),
        looked = .looked.join(", ")
    )]
    NotFound {
        /// The name or path asked for.
        spec: String,
        /// Every place tried, in order.
        looked: Vec<String>,
        /// The `extends` that asked for it, if any.
        from: Option<Location>,
    },
    /// The file exists but could not be read.
    #[error("reading profile {}: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// TOML syntax, unknown key, wrong type or a value that does not parse.
    #[error("{at}: {message}")]
    Invalid {
        /// Where.
        at: Location,
        /// What.
        message: String,
    },
    /// As `Invalid`, when the parser could not say where.
    #[error("{file}: {message}")]
    InvalidFile {
        /// The file.
        file: String,
        /// What.
        message: String,
    },
    /// `$NAME` other than `$CWD`, `$HOME`, `$TMPDIR`.
    #[error("{at}: unknown variable ${name} (known: $CWD, $HOME, $TMPDIR; $$ for a literal $)")]
    UnknownVariable {
        /// Where.
        at: Location,
        /// The variable.
        name: String,
    },
    /// A known variable with no value here (`$HOME` unset, cwd deleted).
    #[error("{at}: ${name} has no value here")]
    UnsetVariable {
        /// Where.
        at: Location,
        /// The variable.
        name: String,
    },
    /// A path that is not absolute after expansion: it would depend on
    /// wherever the agent happens to run.
    #[error("{at}: {path:?} is not an absolute path (after expansion: {expanded:?})")]
    RelativePath {
        /// Where.
        at: Location,
        /// As written.
        path: String,
        /// After expansion.
        expanded: String,
    },
    /// Profiles extending each other.
    #[error("profiles extend each other in a cycle: {}", .chain.join(" -> "))]
    Cycle {
        /// The chain, from the profile asked for to the repeated one.
        chain: Vec<String>,
    },
    /// A name that cannot be a file name.
    #[error("{from}invalid profile name {name:?}", from = .from.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    BadName {
        /// The name.
        name: String,
        /// The `extends` that used it, if any.
        from: Option<Location>,
    },
    /// The file, or a directory on its path, could be changed by someone
    /// else than root and the user running nono-agent: whoever can write it
    /// decides the next sandbox's policy.
    #[error("refusing profile {}: {why}", .file.display())]
    Unsafe {
        /// The file.
        file: PathBuf,
        /// Which path and why.
        why: String,
    },
}
