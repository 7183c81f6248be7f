//! The cgroup BPF enforcer: loading, attaching, pinning, and reading events.

pub mod bpffs;
pub mod loader;
pub mod maps;
pub mod rawlink;
