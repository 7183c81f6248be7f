//! The seccomp user-notification enforcer: the same destination policy as
//! the BPF programs, for hosts or users where cgroup BPF is not available.

pub mod filter;
pub mod identity;
pub mod inbound;
pub mod notify;
pub mod supervisor;
