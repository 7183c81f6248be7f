//! The pure policy decisions. No I/O, no allocation, verifier-friendly loops.
//!
//! This file holds the destination decisions (`connect`, sends, `bind`,
//! packets); the tables of what a socket may be ([`socket`]), which options
//! it may set ([`options`]) and which ancillary data it may send
//! ([`control`]) are in their own modules, each with the function that reads
//! its table.

mod control;
mod options;
mod socket;

pub use control::{decide_control, ControlContext, ControlRule, RefusedControl, REFUSED_CONTROL};
pub use options::{
    decide_setsockopt, device_name_is_loopback, refused_option, sockopt, OptionContext, OptionRule,
    RefusedOption, REFUSED_OPTIONS,
};
pub use socket::{
    cgroup_hook_sees, decide_socket, decide_socketpair, SocketRule, ALLOWED_SOCKETS, ANY,
};

use crate::redirect::Redirects;
use crate::types::{
    is_v4_mapped, Dest, Endpoint, Policy, LOOPBACK_ANY, MAX_LOOPBACK_PORTS, MAX_PROXY_ENDPOINTS,
};

/// Why a destination or socket was allowed or denied. Stable wire values: they
/// travel in BPF events and JSON.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Destination is 127.0.0.1, ::1 or ::ffff:127.0.0.1 on a permitted port.
    Loopback = 1,
    /// Destination is one of the sandbox's proxy endpoints.
    Proxy = 2,
    /// Socket is of a kind [`ALLOWED_SOCKETS`] lists.
    SocketAllowed = 3,
    /// A send without a destination: it goes to the connected peer, which
    /// was judged when the socket was connected.
    ConnectedPeer = 4,
    /// A socket option with no effect on where packets go.
    OptionAllowed = 5,
    /// A bind to the wildcard address (0.0.0.0, ::): allowed, because the
    /// inbound filter (BPF ingress program, or the supervisor's locked socket
    /// filter) drops everything that does not arrive on the loopback device.
    Wildcard = 6,
    /// Transparent mode: a TCP connect the policy refuses went to the
    /// proxy's transparent listener instead, which decides by name.
    Transparent = 7,
    /// Transparent mode: a DNS query (port 53, any address) went to the
    /// agent's resolver.
    Resolver = 8,
    /// Destination is neither loopback nor a proxy endpoint.
    NotAllowed = 16,
    /// Destination is the unspecified address (which Linux routes to the host
    /// itself, so it would bypass the loopback port rules).
    Unspecified = 17,
    /// Destination is in 127.0.0.0/8 but not 127.0.0.1 (e.g. a resolver stub).
    OtherLoopback = 18,
    /// Destination is loopback, but the port is not in the narrowed port list.
    LoopbackPort = 19,
    /// Socket type or protocol other than plain TCP / UDP (raw, ICMP, SCTP,
    /// MPTCP, UDP-Lite, ...).
    SocketType = 20,
    /// A socket option or ancillary data that changes where packets are
    /// routed (IPv4 source route options, IPv6 routing headers); the
    /// supervisor also reports ancillary data that forces an IPv4 outgoing
    /// interface or forges `SCM_CREDENTIALS` with it (see
    /// [`REFUSED_CONTROL`]).
    SocketOption = 21,
    /// A packet to a loopback address leaving through a non-loopback device.
    LoopbackOffDevice = 22,
    /// A bind to an address that is neither loopback nor the wildcard (a
    /// listener on a real interface's address).
    BindAddress = 23,
    /// A packet arriving for a sandbox socket from off the host (not on the
    /// loopback device, not from a proxy endpoint): an inbound connection,
    /// its SYN (which a SYN-cookie SYN-ACK would answer) or a datagram.
    Inbound = 24,
    /// A multicast or anycast membership option: the kernel itself sends
    /// IGMP / MLD reports naming the group, which no socket owns.
    Multicast = 25,
    /// `SO_BINDTODEVICE` / `SO_BINDTOIFINDEX` to a device other than `lo`:
    /// a send to 127.0.0.1 would leave through a real interface.
    DeviceBinding = 26,
    /// A socket family [`ALLOWED_SOCKETS`] does not list (or, for netlink,
    /// a netlink protocol it does not list), or a `socketpair` of a family
    /// other than unix.
    SocketFamily = 27,
    /// The seccomp supervisor could not put its inbound filter on an inet
    /// socket (the sandbox locked a socket filter of its own first), so the
    /// operation is refused.
    InboundFilter = 28,
    /// A listener on the wildcard address where no inbound filter makes it
    /// loopback-only (the seccomp supervisor, on a kernel that refused the
    /// filter).
    WildcardListener = 29,
    /// A unix socket path naming a host daemon's socket the sandbox may not
    /// connect or send to.
    DaemonSocket = 30,
    /// `SCM_CREDENTIALS` naming another process than the sender (the kernel
    /// refuses that to an unprivileged sender; the supervisor, which sends
    /// with its own rights, refuses it for the sandbox).
    ForeignCredentials = 31,
    /// The socket's (or calling task's) cgroup has no policy entry: a
    /// sandbox that ended, a cgroup made inside a sandbox, a socket carried
    /// out of one. Denied everything.
    NoPolicy = 32,
}

impl Reason {
    /// The reason from its wire value.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Loopback),
            2 => Some(Self::Proxy),
            3 => Some(Self::SocketAllowed),
            4 => Some(Self::ConnectedPeer),
            5 => Some(Self::OptionAllowed),
            6 => Some(Self::Wildcard),
            7 => Some(Self::Transparent),
            8 => Some(Self::Resolver),
            16 => Some(Self::NotAllowed),
            17 => Some(Self::Unspecified),
            18 => Some(Self::OtherLoopback),
            19 => Some(Self::LoopbackPort),
            20 => Some(Self::SocketType),
            21 => Some(Self::SocketOption),
            22 => Some(Self::LoopbackOffDevice),
            23 => Some(Self::BindAddress),
            24 => Some(Self::Inbound),
            25 => Some(Self::Multicast),
            26 => Some(Self::DeviceBinding),
            27 => Some(Self::SocketFamily),
            28 => Some(Self::InboundFilter),
            29 => Some(Self::WildcardListener),
            30 => Some(Self::DaemonSocket),
            31 => Some(Self::ForeignCredentials),
            32 => Some(Self::NoPolicy),
            _ => None,
        }
    }

    /// Stable name used in events and summaries.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Proxy => "proxy",
            Self::SocketAllowed => "socket-allowed",
            Self::ConnectedPeer => "connected-peer",
            Self::OptionAllowed => "option-allowed",
            Self::Wildcard => "wildcard-bind",
            Self::Transparent => "redirected-to-proxy",
            Self::Resolver => "redirected-to-resolver",
            Self::NotAllowed => "not-allowed",
            Self::Unspecified => "unspecified-address",
            Self::OtherLoopback => "other-loopback-address",
            Self::LoopbackPort => "loopback-port-not-allowed",
            Self::SocketType => "socket-type-not-allowed",
            Self::SocketOption => "routing-option-not-allowed",
            Self::LoopbackOffDevice => "loopback-address-off-loopback-device",
            Self::BindAddress => "bind-address-not-allowed",
            Self::Inbound => "inbound-not-from-loopback",
            Self::Multicast => "multicast-membership-not-allowed",
            Self::DeviceBinding => "device-binding-not-allowed",
            Self::SocketFamily => "socket-family-not-allowed",
            Self::InboundFilter => "inbound-filter-not-applied",
            Self::WildcardListener => "wildcard-listener-without-inbound-filter",
            Self::DaemonSocket => "daemon-socket-not-allowed",
            Self::ForeignCredentials => "foreign-credentials",
            Self::NoPolicy => "no-policy-for-cgroup",
        }
    }
}

/// The outcome of one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the operation may proceed.
    pub allow: bool,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    #[inline(always)]
    const fn allow(reason: Reason) -> Self {
        Self {
            allow: true,
            reason,
        }
    }

    #[inline(always)]
    const fn deny(reason: Reason) -> Self {
        Self {
            allow: false,
            reason,
        }
    }
}

/// Exactly 127.0.0.1, ::1 or ::ffff:127.0.0.1: the addresses the policy
/// calls loopback.
#[inline(always)]
pub fn is_loopback(a: &[u8; 16]) -> bool {
    if is_v4_mapped(a) {
        a[12] == 127 && a[13] == 0 && a[14] == 0 && a[15] == 1
    } else {
        addr_eq(a, &LOOPBACK_V6)
    }
}

const LOOPBACK_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

#[inline(always)]
fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // Explicit unrolled compare: slices' `==` may become a memcmp call, which
    // the BPF target cannot link.
    let mut i = 0;
    let mut same = true;
    while i < 16 {
        same &= a[i] == b[i];
        i += 1;
    }
    same
}

/// The questions the decision asks of a policy.
///
/// The decision logic (address classification, order of checks) lives only
/// in [`decide_connect`]; where the answers come from differs per enforcer:
/// the BPF programs answer from hash maps (constant-time lookups the verifier
/// checks in microseconds), userspace answers from a [`Policy`] value.
pub trait PolicyView {
    /// Every loopback port is allowed.
    fn loopback_any(&self) -> bool;
    /// This loopback port is allowed (asked only when not `loopback_any`).
    fn loopback_port_allowed(&self, port: u16) -> bool;
    /// This canonical address + port is a proxy endpoint.
    fn is_proxy(&self, endpoint: &Endpoint) -> bool;
    /// Transparent mode's listeners ([`crate::decide_redirect`]); off
    /// unless the policy names them.
    fn redirects(&self) -> Redirects {
        Redirects::OFF
    }
}

impl PolicyView for Policy {
    fn loopback_any(&self) -> bool {
        self.loopback_any == LOOPBACK_ANY
    }

    fn loopback_port_allowed(&self, port: u16) -> bool {
        let n = self.n_loopback_ports as usize;
        let mut i = 0;
        while i < MAX_LOOPBACK_PORTS && i < n {
            if self.loopback_ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }

    fn is_proxy(&self, e: &Endpoint) -> bool {
        let n = self.n_proxies as usize;
        let mut i = 0;
        while i < MAX_PROXY_ENDPOINTS && i < n {
            let p = &self.proxies[i];
            if p.port == e.port && addr_eq(&p.addr, &e.addr) {
                return true;
            }
            i += 1;
        }
        false
    }

    fn redirects(&self) -> Redirects {
        self.redirects
    }
}

/// Decide whether a task in the sandbox may connect or send to `dest`.
///
/// Loopback means exactly 127.0.0.1, ::1 and ::ffff:127.0.0.1: other 127/8
/// addresses are denied because they are often other local services (a DNS
/// stub at 127.0.0.53 would let a child resolve names the proxy refuses).
#[inline(always)]
pub fn decide_connect<P: PolicyView + ?Sized>(policy: &P, dest: &Dest) -> Decision {
    let a = &dest.addr;
    let v4 = is_v4_mapped(a);
    let is_loopback = if v4 {
        a[12] == 127 && a[13] == 0 && a[14] == 0 && a[15] == 1
    } else {
        addr_eq(a, &LOOPBACK_V6)
    };

    if is_loopback && (policy.loopback_any() || policy.loopback_port_allowed(dest.port)) {
        return Decision::allow(Reason::Loopback);
    }
    // A loopback address on a port that is not listed may still be a proxy
    // endpoint, so the proxy check comes before any loopback denial.
    if policy.is_proxy(&Endpoint::from_dest(*dest)) {
        return Decision::allow(Reason::Proxy);
    }
    if is_loopback {
        return Decision::deny(Reason::LoopbackPort);
    }
    if v4 {
        if a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 0 {
            return Decision::deny(Reason::Unspecified);
        }
        if a[12] == 127 {
            return Decision::deny(Reason::OtherLoopback);
        }
    } else if addr_eq(a, &[0; 16]) {
        return Decision::deny(Reason::Unspecified);
    }
    Decision::deny(Reason::NotAllowed)
}

/// Decide an unconnected-UDP send (`sendto`/`sendmsg`/`sendmmsg`).
///
/// The kernel runs the sendmsg hooks with an all-zero address and port when
/// a *connected* socket sends with ancillary data and no destination; the
/// packet then goes to the connected peer, already judged at `connect`. An
/// explicit destination of port 0 is refused by the kernel right after the
/// hook, so "all zero" cannot be used to smuggle a real destination.
#[inline(always)]
pub fn decide_sendmsg<P: PolicyView + ?Sized>(policy: &P, dest: &Dest) -> Decision {
    let a = &dest.addr;
    let unspecified = addr_eq(a, &[0; 16])
        || (is_v4_mapped(a) && a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 0);
    if dest.port == 0 && unspecified {
        return Decision::allow(Reason::ConnectedPeer);
    }
    decide_connect(policy, dest)
}

/// Decide a packet leaving the sandbox, by the destination in its IP header
/// and (for TCP/UDP first fragments) its destination port; `port` is 0 when
/// unknown.
///
/// This is the backstop behind the socket hooks: routing options (IPv4
/// LSRR/SSRR, IPv6 routing headers) send a packet to an address the socket
/// hooks never saw. Loopback destinations pass on any port, because such
/// packets never leave the host and loopback *port* rules are enforced at
/// connect time (a reply from a sandboxed server to a loopback client goes to
/// an ephemeral port). But only on the loopback device: `IP_PKTINFO`,
/// `IP_UNICAST_IF` and friends can push a packet addressed to 127.0.0.1 out
/// of a real interface, where a host on the link can read it.
#[inline(always)]
pub fn decide_egress<P: PolicyView + ?Sized>(
    policy: &P,
    dest: &Dest,
    on_loopback_device: bool,
) -> Decision {
    let a = &dest.addr;
    let loopback = if is_v4_mapped(a) {
        a[12] == 127 && a[13] == 0 && a[14] == 0 && a[15] == 1
    } else {
        addr_eq(a, &LOOPBACK_V6)
    };
    if loopback {
        return if on_loopback_device {
            Decision::allow(Reason::Loopback)
        } else {
            Decision::deny(Reason::LoopbackOffDevice)
        };
    }
    decide_connect(policy, dest)
}

/// Decide a `bind`: loopback addresses (127.0.0.0/8, ::1, and their
/// v4-mapped forms) and the wildcard address are allowed, anything else (a
/// real interface's address) is refused.
///
/// A wildcard listener is allowed because ordinary servers bind `0.0.0.0` or
/// a dual-stack `::` and are reached on 127.0.0.1; what would make it an
/// inbound path is stopped by [`decide_ingress`], which every enforcer runs
/// on every packet delivered to a sandbox socket.
#[inline(always)]
pub fn decide_bind(dest: &Dest) -> Decision {
    let a = &dest.addr;
    if is_v4_mapped(a) {
        if a[12] == 127 {
            return Decision::allow(Reason::Loopback);
        }
        if a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 0 {
            return Decision::allow(Reason::Wildcard);
        }
    } else if addr_eq(a, &LOOPBACK_V6) {
        return Decision::allow(Reason::Loopback);
    } else if addr_eq(a, &[0; 16]) {
        return Decision::allow(Reason::Wildcard);
    }
    Decision::deny(Reason::BindAddress)
}

/// Decide a packet arriving for a sandbox socket, by its source address and
/// (TCP/UDP) source port; `port` is 0 when unknown.
///
/// Only the loopback device and the proxy endpoints may talk to the sandbox:
/// an inbound connection from anywhere else would be a path out (the sandbox
/// writes to the accepted socket), and so would the SYN-ACKs the kernel
/// sends from SYN cookies, which belong to no socket the egress check sees.
/// Dropping the SYN before the listener sees it stops both.
#[inline(always)]
pub fn decide_ingress<P: PolicyView + ?Sized>(
    policy: &P,
    src: &Dest,
    on_loopback_device: bool,
) -> Decision {
    if on_loopback_device {
        return Decision::allow(Reason::Loopback);
    }
    // A loopback source off the loopback device is a martian the kernel
    // drops anyway; never letting a loopback proxy endpoint vouch for it
    // keeps [`Policy::intersect`] exact (an endpoint allowed there through
    // the outer policy's loopback rule admits nothing more inbound).
    if src.port != 0 && !is_loopback(&src.addr) && policy.is_proxy(&Endpoint::from_dest(*src)) {
        return Decision::allow(Reason::Proxy);
    }
    Decision::deny(Reason::Inbound)
}

#[cfg(test)]
mod tests;
