//! The seccomp module's errors.
//!
//! Answers to the sandbox's calls are errnos (`i32`), the values the kernel
//! hands back to it; this type is for what goes wrong in the agent itself.

/// What can go wrong building the seccomp filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two instructions carry the same label.
    #[error("seccomp filter: duplicate label {0}")]
    DuplicateLabel(&'static str),
    /// A jump names a label no instruction carries.
    #[error("seccomp filter: jump to unknown label {0}")]
    UnknownLabel(&'static str),
    /// Classic BPF only jumps forward.
    #[error("seccomp filter: backward jump to {0}")]
    BackwardJump(&'static str),
    /// A classic BPF jump spans at most 255 instructions.
    #[error("seccomp filter: jump to {0} too far")]
    JumpTooFar(&'static str),
    /// A generated block too long to jump over.
    #[error("seccomp filter: a block of {0} instructions is too long to jump over")]
    BlockTooLong(usize),
}
