//! The seccomp enforcer: the same decisions as the BPF programs (the tables
//! and `decide_*` functions of `nono_common`), for hosts or users where
//! cgroup BPF is not available, and the hardening filter under the BPF
//! enforcer.
//!
//! `filter` generates the classic-BPF filter from the shared tables;
//! `supervisor` answers the calls the filter sends it, judged by the pure
//! functions of `judge`.

mod error;
pub mod filter;
pub mod identity;
pub mod inbound;
pub mod judge;
pub mod notify;
pub mod supervisor;

pub use error::Error;
