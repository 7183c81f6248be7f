//! `socket` and `socketpair`: the one table of sockets the sandbox may create.

use super::{Decision, Reason};
use crate::consts::*;

/// In a [`SocketRule`], matches every socket type or every protocol.
pub const ANY: u32 = u32::MAX;

/// One entry of [`ALLOWED_SOCKETS`]: sockets of `family` whose type (without
/// `SOCK_NONBLOCK` / `SOCK_CLOEXEC`) is `ty` and whose protocol argument is
/// `protocol`, either of which may be [`ANY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketRule {
    /// `AF_*`.
    pub family: u32,
    /// `SOCK_*` without the flag bits, or [`ANY`].
    pub ty: u32,
    /// The `protocol` argument as given (`IPPROTO_IP` is not resolved to
    /// the family's default), or [`ANY`].
    pub protocol: u32,
    /// `socketpair` of this kind is allowed too.
    pub socketpair: bool,
    /// The reason a socket of this family that no entry allows is refused
    /// with; the same for every entry of one family.
    pub refused: Reason,
}

const fn allowed(
    family: u32,
    ty: u32,
    protocol: u32,
    socketpair: bool,
    refused: Reason,
) -> SocketRule {
    SocketRule {
        family,
        ty,
        protocol,
        socketpair,
        refused,
    }
}

/// The one table of sockets the sandbox may create; everything else is
/// refused. The BPF `sock_create` program decides through [`decide_socket`]
/// and the seccomp filter is generated from it, so both enforcers refuse the
/// same sockets.
///
/// - unix sockets of any kind (local only, and `connect`/`sendto` to a path
///   is judged by the inode it names);
/// - netlink only for `NETLINK_ROUTE` (address and route queries that
///   resolvers and `getaddrinfo` make); the other netlink families talk to
///   the kernel's firewall, audit, uevents, ...;
/// - inet and inet6 only plain TCP and UDP, because every other kind (raw,
///   ICMP "ping" sockets, SCTP, MPTCP, UDP-Lite) either bypasses the
///   connect/sendmsg hooks or is not proven to be covered by them.
pub const ALLOWED_SOCKETS: [SocketRule; 10] = {
    use Reason::{SocketFamily, SocketType};
    [
        allowed(AF_UNIX, ANY, ANY, true, SocketFamily),
        allowed(AF_NETLINK, ANY, NETLINK_ROUTE, false, SocketFamily),
        allowed(AF_INET, SOCK_STREAM, IPPROTO_IP, false, SocketType),
        allowed(AF_INET, SOCK_STREAM, IPPROTO_TCP, false, SocketType),
        allowed(AF_INET, SOCK_DGRAM, IPPROTO_IP, false, SocketType),
        allowed(AF_INET, SOCK_DGRAM, IPPROTO_UDP, false, SocketType),
        allowed(AF_INET6, SOCK_STREAM, IPPROTO_IP, false, SocketType),
        allowed(AF_INET6, SOCK_STREAM, IPPROTO_TCP, false, SocketType),
        allowed(AF_INET6, SOCK_DGRAM, IPPROTO_IP, false, SocketType),
        allowed(AF_INET6, SOCK_DGRAM, IPPROTO_UDP, false, SocketType),
    ]
};

/// Whether the kernel runs the cgroup `sock_create` hook for sockets of
/// `family`: it does from `inet_create` and `inet6_create` only. Sockets of
/// these families are judged (and logged) by the BPF program under the BPF
/// enforcer; the others only by the seccomp filter.
#[inline(always)]
pub const fn cgroup_hook_sees(family: u32) -> bool {
    family == AF_INET || family == AF_INET6
}

#[inline(always)]
const fn matches(r: &SocketRule, family: u32, ty: u32, protocol: u32) -> bool {
    r.family == family
        && (r.ty == ANY || r.ty == ty)
        && (r.protocol == ANY || r.protocol == protocol)
}

/// Decide whether a task in the sandbox may create a socket, against
/// [`ALLOWED_SOCKETS`]. `sock_type` may carry `SOCK_NONBLOCK`/`SOCK_CLOEXEC`
/// bits (as in a raw `socket()` argument).
#[inline(always)]
pub fn decide_socket(family: u32, sock_type: u32, protocol: u32) -> Decision {
    let ty = sock_type & SOCK_TYPE_MASK;
    let mut refused = Reason::SocketFamily;
    let mut i = 0;
    while i < ALLOWED_SOCKETS.len() {
        let r = &ALLOWED_SOCKETS[i];
        if matches(r, family, ty, protocol) {
            return Decision::allow(Reason::SocketAllowed);
        }
        if r.family == family {
            refused = r.refused;
        }
        i += 1;
    }
    Decision::deny(refused)
}

/// Decide a `socketpair`: a kind [`ALLOWED_SOCKETS`] allows for
/// `socketpair` too; a kind it allows only for `socket` is refused as
/// [`Reason::SocketFamily`].
#[inline(always)]
pub fn decide_socketpair(family: u32, sock_type: u32, protocol: u32) -> Decision {
    let d = decide_socket(family, sock_type, protocol);
    if !d.allow {
        return d;
    }
    let ty = sock_type & SOCK_TYPE_MASK;
    let mut i = 0;
    while i < ALLOWED_SOCKETS.len() {
        let r = &ALLOWED_SOCKETS[i];
        if r.socketpair && matches(r, family, ty, protocol) {
            return d;
        }
        i += 1;
    }
    Decision::deny(Reason::SocketFamily)
}
