//! `setsockopt`: the one table of socket options the sandbox may not set.

use super::{Decision, Reason};

/// Socket option levels and names the policy knows about.
pub mod sockopt {
    /// `SOL_IP`.
    pub const SOL_IP: i32 = 0;
    /// `SOL_SOCKET`.
    pub const SOL_SOCKET: i32 = 1;
    /// `SOL_IPV6`.
    pub const SOL_IPV6: i32 = 41;
    /// `IP_OPTIONS` (may carry LSRR/SSRR source routes), as an option and
    /// as a control message.
    pub const IP_OPTIONS: i32 = 4;
    /// `IP_RETOPTS`, a control message of IP options (source routes
    /// included).
    pub const IP_RETOPTS: i32 = 7;
    /// `IP_PKTINFO`: as an option a receive flag, as a control message it
    /// may choose the outgoing interface.
    pub const IP_PKTINFO: i32 = 8;
    /// `SCM_CREDENTIALS` (at `SOL_SOCKET`), a control message naming the
    /// sender's pid, uid and gid.
    pub const SCM_CREDENTIALS: i32 = 2;
    /// `IPV6_2292RTHDR`.
    pub const IPV6_2292RTHDR: i32 = 5;
    /// `IPV6_2292PKTOPTIONS` (sticky options in cmsg form, routing headers
    /// included).
    pub const IPV6_2292PKTOPTIONS: i32 = 6;
    /// `IPV6_RTHDR`.
    pub const IPV6_RTHDR: i32 = 57;
    /// `IP_UNICAST_IF`: sends out of a chosen interface, even to 127.0.0.1.
    pub const IP_UNICAST_IF: i32 = 50;
    /// `IPV6_UNICAST_IF`.
    pub const IPV6_UNICAST_IF: i32 = 76;
    /// `IPV6_PKTINFO` as a socket option sets a sticky outgoing interface.
    pub const IPV6_PKTINFO: i32 = 50;
    /// `IP_ADD_MEMBERSHIP`; `IP_DROP_MEMBERSHIP` (36), the source-filter
    /// options `IP_UNBLOCK_SOURCE` .. `IP_MSFILTER` (37..=41) and the
    /// protocol-independent `MCAST_JOIN_GROUP` .. `MCAST_MSFILTER` (42..=48)
    /// follow it.
    pub const IP_ADD_MEMBERSHIP: i32 = 35;
    /// `MCAST_MSFILTER`, the last of the membership options at `SOL_IP`.
    pub const MCAST_MSFILTER: i32 = 48;
    /// `MCAST_JOIN_GROUP`, the first protocol-independent membership option
    /// (also valid at `SOL_IPV6`).
    pub const MCAST_JOIN_GROUP: i32 = 42;
    /// `IPV6_ADD_MEMBERSHIP` (alias `IPV6_JOIN_GROUP`).
    pub const IPV6_ADD_MEMBERSHIP: i32 = 20;
    /// `IPV6_DROP_MEMBERSHIP` (alias `IPV6_LEAVE_GROUP`).
    pub const IPV6_DROP_MEMBERSHIP: i32 = 21;
    /// `IPV6_JOIN_ANYCAST`: joins the solicited-node group, so MLD reports.
    pub const IPV6_JOIN_ANYCAST: i32 = 27;
    /// `IPV6_LEAVE_ANYCAST`.
    pub const IPV6_LEAVE_ANYCAST: i32 = 28;
    /// `SO_BINDTODEVICE` (a device name).
    pub const SO_BINDTODEVICE: i32 = 25;
    /// `SO_BINDTOIFINDEX` (an interface index).
    pub const SO_BINDTOIFINDEX: i32 = 62;
    /// The loopback device's interface index, the same in every network
    /// namespace.
    pub const LOOPBACK_IFINDEX: u32 = 1;
}

/// How a refused option may still be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionRule {
    /// Refused whatever its value.
    Refuse,
    /// Allowed only when it binds to the loopback device or unbinds, which
    /// only an enforcer that reads the option's value can tell; the others
    /// refuse it.
    LoopbackDeviceOnly,
    /// Allowed only when a packet filter on the sandbox's sockets (the BPF
    /// egress program) drops what it would push off the loopback device.
    NeedsPacketFilter,
}

/// One entry of [`REFUSED_OPTIONS`]: `optname` values `first..=last` at
/// `level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusedOption {
    /// `setsockopt` level.
    pub level: i32,
    /// First option name of the range.
    pub first: i32,
    /// Last option name of the range (inclusive).
    pub last: i32,
    /// When it may still be allowed.
    pub rule: OptionRule,
    /// The denial reason.
    pub reason: Reason,
}

const fn refused(
    level: i32,
    first: i32,
    last: i32,
    rule: OptionRule,
    reason: Reason,
) -> RefusedOption {
    RefusedOption {
        level,
        first,
        last,
        rule,
        reason,
    }
}

/// The one table of socket options the sandbox may not set, read by the BPF
/// setsockopt program (through [`decide_setsockopt`]) and turned into
/// comparisons by the seccomp filter builder, so both enforcers refuse the
/// same options.
///
/// - options that route a packet to an address `connect`/`sendto` never
///   named (source routes, routing headers);
/// - options that push a packet to 127.0.0.1 out of a real interface;
/// - multicast and anycast memberships and source filters (IPv4 and IPv6,
///   `MCAST_*` included): joining or leaving makes the kernel send IGMP / MLD
///   reports naming the group, packets no sandbox socket owns, so neither
///   socket hooks nor the egress program see them;
/// - device binding to anything but `lo`.
pub const REFUSED_OPTIONS: [RefusedOption; 12] = {
    use sockopt::*;
    use OptionRule::*;
    [
        refused(SOL_IP, IP_OPTIONS, IP_OPTIONS, Refuse, Reason::SocketOption),
        refused(
            SOL_IP,
            IP_ADD_MEMBERSHIP,
            MCAST_MSFILTER,
            Refuse,
            Reason::Multicast,
        ),
        refused(
            SOL_IP,
            IP_UNICAST_IF,
            IP_UNICAST_IF,
            NeedsPacketFilter,
            Reason::LoopbackOffDevice,
        ),
        refused(
            SOL_IPV6,
            IPV6_2292RTHDR,
            IPV6_2292PKTOPTIONS,
            Refuse,
            Reason::SocketOption,
        ),
        refused(
            SOL_IPV6,
            IPV6_RTHDR,
            IPV6_RTHDR,
            Refuse,
            Reason::SocketOption,
        ),
        refused(
            SOL_IPV6,
            IPV6_ADD_MEMBERSHIP,
            IPV6_DROP_MEMBERSHIP,
            Refuse,
            Reason::Multicast,
        ),
        refused(
            SOL_IPV6,
            IPV6_JOIN_ANYCAST,
            IPV6_LEAVE_ANYCAST,
            Refuse,
            Reason::Multicast,
        ),
        refused(
            SOL_IPV6,
            MCAST_JOIN_GROUP,
            MCAST_MSFILTER,
            Refuse,
            Reason::Multicast,
        ),
        refused(
            SOL_IPV6,
            IPV6_PKTINFO,
            IPV6_PKTINFO,
            NeedsPacketFilter,
            Reason::LoopbackOffDevice,
        ),
        refused(
            SOL_IPV6,
            IPV6_UNICAST_IF,
            IPV6_UNICAST_IF,
            NeedsPacketFilter,
            Reason::LoopbackOffDevice,
        ),
        refused(
            SOL_SOCKET,
            SO_BINDTODEVICE,
            SO_BINDTODEVICE,
            LoopbackDeviceOnly,
            Reason::DeviceBinding,
        ),
        refused(
            SOL_SOCKET,
            SO_BINDTOIFINDEX,
            SO_BINDTOIFINDEX,
            LoopbackDeviceOnly,
            Reason::DeviceBinding,
        ),
    ]
};

/// The entry of [`REFUSED_OPTIONS`] covering an option, if any.
#[inline(always)]
pub fn refused_option(level: i32, optname: i32) -> Option<RefusedOption> {
    let mut i = 0;
    while i < REFUSED_OPTIONS.len() {
        let e = REFUSED_OPTIONS[i];
        if e.level == level && optname >= e.first && optname <= e.last {
            return Some(e);
        }
        i += 1;
    }
    None
}

/// What the enforcer knows about a `setsockopt` beyond level and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionContext {
    /// The value was read and binds to the loopback device (or unbinds).
    pub binds_loopback_device: bool,
    /// A packet filter (the BPF egress program) backstops the sandbox's
    /// sends.
    pub packet_filter: bool,
}

/// Decide a `setsockopt` against [`REFUSED_OPTIONS`].
#[inline(always)]
pub fn decide_setsockopt(level: i32, optname: i32, ctx: OptionContext) -> Decision {
    let Some(e) = refused_option(level, optname) else {
        return Decision::allow(Reason::OptionAllowed);
    };
    let allowed = match e.rule {
        OptionRule::Refuse => false,
        OptionRule::LoopbackDeviceOnly => ctx.binds_loopback_device,
        OptionRule::NeedsPacketFilter => ctx.packet_filter,
    };
    if allowed {
        Decision::allow(Reason::OptionAllowed)
    } else {
        Decision::deny(e.reason)
    }
}

/// Whether a `SO_BINDTODEVICE` value names the loopback device or unbinds:
/// empty, `"lo"`, each optionally NUL-terminated. The kernel reads at most
/// `IFNAMSIZ - 1` bytes and stops at the first NUL.
#[inline(always)]
pub fn device_name_is_loopback(name: &[u8]) -> bool {
    let n = name.len();
    (n == 0 || name[0] == 0)
        || (n >= 2 && name[0] == b'l' && name[1] == b'o' && (n == 2 || name[2] == 0))
}
