//! `nono-agent daemon`: the BPF enforcer as a service. Root loads and
//! verifies the programs once, attaches them once to a parent cgroup, and
//! every user's `exec` gets a sandbox cgroup under it with its own policy
//! entry, through a unix socket.
//!
//! What a hostile client could try, and where it is stopped:
//! - widen its own confinement: a caller inside a daemon sandbox only gets a
//!   sandbox nested in its own with the intersection of both policies
//!   (`server`, `nono_common::Policy::intersect`); a caller in a sandbox of
//!   `exec` as root is refused;
//! - confine (and later kill) someone else's process: only the caller's own
//!   child, with its uid, in its cgroup, held against pid reuse (`place`);
//! - read or end another sandbox: a sandbox belongs to the connection that
//!   created it; events are routed by the kernel-written cgroup id; a
//!   reconnecting owner needs the sandbox's secret token and uid;
//! - exhaust the daemon: per-uid limits on sandboxes, connections and
//!   request rate, a frame size limit and a deadline per frame (`conn`);
//! - outlive the daemon: pinned programs and maps keep every sandbox
//!   confined when the daemon dies; the next one takes them over
//!   (`shared`, `records`).

pub mod client;
pub mod conn;
pub mod log;
pub mod metrics;
pub mod place;
pub mod policy;
pub mod process;
pub mod protocol;
pub mod records;
pub mod server;
pub mod shared;
