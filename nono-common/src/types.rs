//! `#[repr(C)]` types shared with the BPF programs through maps.

/// How many proxy endpoints one sandbox policy can hold.
pub const MAX_PROXY_ENDPOINTS: usize = 16;
/// How many loopback ports a narrowed loopback policy can list.
pub const MAX_LOOPBACK_PORTS: usize = 64;
/// How many sandboxes the daemon's maps hold (a private copy per sandbox
/// holds one).
pub const MAX_SANDBOXES: usize = 16384;
/// Proxy-endpoint entries the daemon's maps hold, for all sandboxes
/// together (a hash map's bucket array is allocated at creation, 16 bytes
/// per entry of capacity; per-uid limits keep one user from taking them all).
pub const DAEMON_PROXY_ENTRIES: usize = 65536;
/// Transparent-mode records of redirected sockets the daemon's map holds,
/// for all sandboxes together (an LRU map: preallocated, the oldest
/// evicted when full).
pub const DAEMON_ORIGINAL_ENTRIES: usize = 65536;
/// Loopback-port entries the daemon's maps hold (as above).
pub const DAEMON_PORT_ENTRIES: usize = 65536;
/// Value of [`Policy::loopback_any`] meaning every loopback port is allowed.
pub const LOOPBACK_ANY: u32 = 1;

/// A destination in canonical form.
///
/// IPv4 addresses are stored as v4-mapped IPv6 (`::ffff:a.b.c.d`), so that a
/// v4 destination and its v4-mapped spelling on an `AF_INET6` socket are the
/// same value and cannot be judged differently.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dest {
    /// Address octets in network order (v4 as v4-mapped).
    pub addr: [u8; 16],
    /// Port in host order.
    pub port: u16,
}

impl Dest {
    /// A destination from IPv4 octets.
    #[inline(always)]
    pub const fn v4(octets: [u8; 4], port: u16) -> Self {
        Self {
            addr: canonical_v4(octets),
            port,
        }
    }

    /// A destination from IPv6 octets (v4-mapped forms stay v4-mapped, which
    /// is already the canonical form).
    #[inline(always)]
    pub const fn v6(octets: [u8; 16], port: u16) -> Self {
        Self {
            addr: canonical_v6(octets),
            port,
        }
    }

    /// True when the canonical address is a v4 (v4-mapped) address.
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        is_v4_mapped(&self.addr)
    }
}

/// The canonical (v4-mapped) form of an IPv4 address.
#[inline(always)]
pub const fn canonical_v4(o: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
    ]
}

/// The canonical form of an IPv6 address: itself. Kept as a function so the
/// place where a future normalisation would go is obvious.
#[inline(always)]
pub const fn canonical_v6(o: [u8; 16]) -> [u8; 16] {
    o
}

#[inline(always)]
pub(crate) const fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// An address + port the sandbox may reach besides loopback (its proxy).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Canonical address (v4 as v4-mapped).
    pub addr: [u8; 16],
    /// Port in host order.
    pub port: u16,
    /// Padding, always zero, so the layout has no uninitialised bytes.
    pub _pad: [u8; 2],
}

impl Endpoint {
    /// An endpoint from a canonical destination.
    pub const fn from_dest(d: Dest) -> Self {
        Self {
            addr: d.addr,
            port: d.port,
            _pad: [0; 2],
        }
    }
}

/// One sandbox's network policy as userspace holds it: the seccomp
/// supervisor judges against it, and the BPF loader writes it into the
/// `SETTINGS`, `PROXIES` and `LOOPBACK_PORTS` maps (which the programs
/// query through their own `PolicyView`).
///
/// A zeroed policy (no proxies, no loopback ports, `loopback_any == 0`) denies
/// everything, so a map the agent failed to fill fails closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// [`LOOPBACK_ANY`] to allow every loopback port, 0 to allow only
    /// `loopback_ports`.
    pub loopback_any: u32,
    /// Number of valid entries in `proxies`.
    pub n_proxies: u32,
    /// Number of valid entries in `loopback_ports`.
    pub n_loopback_ports: u32,
    /// [`crate::AUDIT_ON`]: audit mode (refusals that a rule could lift are
    /// let through and reported as would-deny, see [`crate::audit_verdict`]);
    /// 0: enforce.
    pub audit: u32,
    /// Endpoints reachable besides loopback.
    pub proxies: [Endpoint; MAX_PROXY_ENDPOINTS],
    /// Loopback ports reachable when `loopback_any` is 0.
    pub loopback_ports: [u16; MAX_LOOPBACK_PORTS],
    /// Transparent mode's listeners (all zero: off).
    pub redirects: crate::Redirects,
}

impl Policy {
    /// The policy that denies everything.
    pub const DENY_ALL: Policy = Policy {
        loopback_any: 0,
        n_proxies: 0,
        n_loopback_ports: 0,
        audit: 0,
        proxies: [Endpoint {
            addr: [0; 16],
            port: 0,
            _pad: [0; 2],
        }; MAX_PROXY_ENDPOINTS],
        loopback_ports: [0; MAX_LOOPBACK_PORTS],
        redirects: crate::Redirects::OFF,
    };
}

impl Default for Policy {
    fn default() -> Self {
        Self::DENY_ALL
    }
}

/// Scalar settings of a sandbox: the value of its entry in the BPF
/// `POLICIES` map, keyed by the sandbox cgroup's id. A cgroup with no entry
/// is denied everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// [`LOOPBACK_ANY`] to allow every loopback port.
    pub loopback_any: u32,
    /// [`crate::AUDIT_ON`] for audit mode (see [`Policy::audit`]).
    pub audit: u32,
    /// Transparent mode's listeners (see [`Policy::redirects`]).
    pub redirects: crate::Redirects,
}

/// Which enforcement point produced a decision or an event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `cgroup/connect4`.
    Connect4 = 1,
    /// `cgroup/connect6`.
    Connect6 = 2,
    /// `cgroup/sendmsg4`.
    Sendmsg4 = 3,
    /// `cgroup/sendmsg6`.
    Sendmsg6 = 4,
    /// `cgroup/sock_create`.
    SockCreate = 5,
    /// `cgroup_skb/egress`: the packet's real destination, after routing
    /// options and extension headers have had their say.
    Egress = 6,
    /// `cgroup/setsockopt`.
    Setsockopt = 7,
    /// `cgroup_skb/ingress`: a packet arriving for a sandbox socket, by its
    /// source.
    Ingress = 8,
    /// `cgroup/bind4`.
    Bind4 = 9,
    /// `cgroup/bind6`.
    Bind6 = 10,
}

impl Hook {
    /// The hook from its wire value.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Connect4),
            2 => Some(Self::Connect6),
            3 => Some(Self::Sendmsg4),
            4 => Some(Self::Sendmsg6),
            5 => Some(Self::SockCreate),
            6 => Some(Self::Egress),
            7 => Some(Self::Setsockopt),
            8 => Some(Self::Ingress),
            9 => Some(Self::Bind4),
            10 => Some(Self::Bind6),
            _ => None,
        }
    }

    /// Stable name used in events and summaries.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
            Self::SockCreate => "sock_create",
            Self::Egress => "egress",
            Self::Setsockopt => "setsockopt",
            Self::Ingress => "ingress",
            Self::Bind4 => "bind4",
            Self::Bind6 => "bind6",
        }
    }
}

/// One denial, written by a BPF program to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyEvent {
    /// Thread id (kernel pid).
    pub pid: u32,
    /// Process id (kernel tgid).
    pub tgid: u32,
    /// cgroup v2 id of the sandbox whose policy decided: the calling task's
    /// cgroup for socket calls, the socket's for packets.
    pub cgroup_id: u64,
    /// Task command name, NUL padded.
    pub comm: [u8; 16],
    /// A [`Hook`] value.
    pub hook: u32,
    /// Socket family (`AF_INET` / `AF_INET6`).
    pub family: u32,
    /// Socket type.
    pub sock_type: u32,
    /// Socket protocol (for `egress`: the IP protocol of the packet; for
    /// `setsockopt`: the option name, with the level in `sock_type`).
    pub protocol: u32,
    /// Canonical destination address (zero for `sock_create`).
    pub addr: [u8; 16],
    /// Destination port in host order (zero for `sock_create`).
    pub port: u16,
    /// [`crate::EVENT_DENY`] or [`crate::EVENT_WOULD_DENY`] (audit mode:
    /// the operation was let through).
    pub verdict: u16,
    /// A [`crate::Reason`] value.
    pub reason: u32,
}

/// Key of the BPF `PROXIES` map: one proxy endpoint of one sandbox.
///
/// Every per-sandbox map is keyed by the sandbox cgroup's v2 id, so one set
/// of programs attached once (the daemon) serves every sandbox, and a cgroup
/// nobody wrote an entry for finds nothing and is denied.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProxyKey {
    /// The sandbox cgroup's id.
    pub cgroup: u64,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Padding, always zero (a hash key must have no uninitialised bytes).
    pub _pad: [u8; 4],
}

/// Key of the BPF `LOOPBACK_PORTS` map: one allowed loopback port of one
/// sandbox.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortKey {
    /// The sandbox cgroup's id.
    pub cgroup: u64,
    /// The port, host order.
    pub port: u16,
    /// Padding, always zero.
    pub _pad: [u8; 6],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three types are `#[repr(C)]`, `Copy`, contain only integers
    // and byte arrays, and have explicit padding fields, so every bit pattern
    // is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::Policy {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Endpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DenyEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProxyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::Original {}
}
