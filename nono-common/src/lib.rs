//! Types and the one policy decision shared by every enforcer.
//!
//! The BPF programs and the userspace agent (its seccomp filter and
//! supervisor) all link this crate, so "is this destination, socket, option
//! or control message allowed?" has exactly one answer regardless of which
//! enforcer asks. The crate is `no_std` without `alloc` so
//! it compiles for the `bpfel-unknown-none` target, and every function that the
//! BPF side calls is a bounded loop over fixed-size arrays so the verifier
//! accepts it.
#![no_std]
#![deny(missing_docs)]

mod audit;
mod decision;
mod intersect;
mod redirect;
mod types;

pub use audit::{
    audit_verdict, auditable_reason, never_allowed, Never, Verdict, AUDIT_ON, EVENT_DENY,
    EVENT_WOULD_DENY,
};
pub use decision::{
    cgroup_hook_sees, decide_bind, decide_connect, decide_control, decide_egress, decide_ingress,
    decide_sendmsg, decide_setsockopt, decide_socket, decide_socketpair, device_name_is_loopback,
    is_loopback, refused_option, sockopt, ControlContext, ControlRule, Decision, OptionContext,
    OptionRule, PolicyView, Reason, RefusedControl, RefusedOption, SocketRule, ALLOWED_SOCKETS,
    ANY, REFUSED_CONTROL, REFUSED_OPTIONS,
};
pub use redirect::{
    decide_redirect, is_listener, Original, Redirect, Redirects, Transport, DNS_PORT,
};
pub use types::{
    canonical_v4, canonical_v6, DenyEvent, Dest, Endpoint, Hook, Policy, PortKey, ProxyKey,
    Settings, DAEMON_ORIGINAL_ENTRIES, DAEMON_PORT_ENTRIES, DAEMON_PROXY_ENTRIES, LOOPBACK_ANY,
    MAX_LOOPBACK_PORTS, MAX_PROXY_ENDPOINTS, MAX_SANDBOXES,
};

/// Socket constants, duplicated from the kernel UAPI so the crate needs no libc
/// (there is none on the BPF target).
pub mod consts {
    /// `AF_UNIX`.
    pub const AF_UNIX: u32 = 1;
    /// `AF_INET`.
    pub const AF_INET: u32 = 2;
    /// `AF_INET6`.
    pub const AF_INET6: u32 = 10;
    /// `AF_NETLINK`.
    pub const AF_NETLINK: u32 = 16;
    /// `NETLINK_ROUTE`, the netlink protocol of address and route queries.
    pub const NETLINK_ROUTE: u32 = 0;
    /// `SOCK_STREAM`.
    pub const SOCK_STREAM: u32 = 1;
    /// `SOCK_DGRAM`.
    pub const SOCK_DGRAM: u32 = 2;
    /// `SOCK_RAW`.
    pub const SOCK_RAW: u32 = 3;
    /// The kernel's `SOCK_TYPE_MASK`: the bits of a socket type that are not
    /// `SOCK_NONBLOCK` / `SOCK_CLOEXEC`.
    pub const SOCK_TYPE_MASK: u32 = 0xf;
    /// `IPPROTO_IP`, which `socket()` resolves to the family's default protocol.
    pub const IPPROTO_IP: u32 = 0;
    /// `IPPROTO_ICMP`.
    pub const IPPROTO_ICMP: u32 = 1;
    /// `IPPROTO_TCP`.
    pub const IPPROTO_TCP: u32 = 6;
    /// `IPPROTO_UDP`.
    pub const IPPROTO_UDP: u32 = 17;
    /// `IPPROTO_ICMPV6`.
    pub const IPPROTO_ICMPV6: u32 = 58;
    /// `IPPROTO_MPTCP`.
    pub const IPPROTO_MPTCP: u32 = 262;
}
