//! Transparent mode: which connects and sends the kernel hooks rewrite to
//! the agent's own listeners on loopback instead of refusing them, and
//! which addresses a socket's reads must show as the one it dialled.
//!
//! Only two things are ever rewritten, and only in a sandbox whose policy
//! names the listeners ([`Redirects`]):
//! - DNS: UDP or TCP to port 53 of *any* address (a hard-coded resolver, a
//!   stub on 127.0.0.53, the host's own resolver on loopback) goes to the
//!   agent's resolver, which answers only for allowed names and never sends
//!   a refused name upstream;
//! - TCP that the ordinary decision refuses as [`Reason::NotAllowed`] goes
//!   to the proxy's transparent listener, which decides by name.
//!
//! Everything else keeps the ordinary decision: UDP other than DNS (QUIC
//! clients fall back to TCP), loopback ports the policy narrowed away,
//! other 127/8 addresses, the unspecified address, and the ranges no rule
//! opens ([`crate::never_allowed`]: cloud metadata, link-local), which stay
//! refused at the kernel rather than becoming the proxy's business.

use crate::decision::{decide_connect, PolicyView, Reason};
use crate::never_allowed;
use crate::types::{canonical_v4, Dest};

/// The port DNS queries are addressed to.
pub const DNS_PORT: u16 = 53;

/// Where a transparent sandbox's redirected traffic goes: ports of the
/// agent's listeners on 127.0.0.1 (v4 and v4-mapped destinations) and ::1
/// (IPv6 destinations). Zero: no listener for that family, so nothing is
/// redirected there (it is refused as before). All zero: transparent mode
/// is off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Redirects {
    /// The proxy's transparent listener on 127.0.0.1.
    pub tcp4: u16,
    /// The proxy's transparent listener on ::1.
    pub tcp6: u16,
    /// The resolver on 127.0.0.1 (UDP and TCP).
    pub dns4: u16,
    /// The resolver on ::1 (UDP and TCP).
    pub dns6: u16,
}

impl Redirects {
    /// Transparent mode off.
    pub const OFF: Redirects = Redirects {
        tcp4: 0,
        tcp6: 0,
        dns4: 0,
        dns6: 0,
    };

    /// Whether any listener is named.
    #[inline(always)]
    pub const fn is_on(&self) -> bool {
        self.tcp4 != 0 || self.tcp6 != 0 || self.dns4 != 0 || self.dns6 != 0
    }
}

/// The transport a socket speaks, from its type and protocol as the hooks
/// see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `SOCK_STREAM` + TCP.
    Tcp,
    /// `SOCK_DGRAM` + UDP.
    Udp,
    /// Anything else (never redirected).
    Other,
}

impl Transport {
    /// The transport of a socket of this type and protocol (`protocol` 0
    /// means the family's default, which the kernel has resolved by the
    /// time a hook runs, but the supervisor may still see it).
    #[inline(always)]
    pub const fn of(sock_type: u32, protocol: u32) -> Self {
        use crate::consts::{IPPROTO_IP, IPPROTO_TCP, IPPROTO_UDP, SOCK_DGRAM, SOCK_STREAM};
        let ty = sock_type & crate::consts::SOCK_TYPE_MASK;
        if ty == SOCK_STREAM && (protocol == IPPROTO_TCP || protocol == IPPROTO_IP) {
            Transport::Tcp
        } else if ty == SOCK_DGRAM && (protocol == IPPROTO_UDP || protocol == IPPROTO_IP) {
            Transport::Udp
        } else {
            Transport::Other
        }
    }
}

/// A rewrite: where the connect or send goes instead, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// The listener (canonical: v4 as v4-mapped 127.0.0.1, else ::1).
    pub to: Dest,
    /// [`Reason::Resolver`] or [`Reason::Transparent`].
    pub reason: Reason,
}

/// The record a hook keeps of a redirected socket's original destination,
/// by socket cookie: the proxy asks for it to learn where the client
/// dialled, and `getpeername`/`recvmsg` show it instead of the listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Original {
    /// Canonical address dialled (v4 as v4-mapped).
    pub addr: [u8; 16],
    /// Port dialled, host order.
    pub port: u16,
    /// Padding, always zero.
    pub _pad: [u8; 6],
    /// The cgroup of the sandbox that dialled: whoever asks for the record
    /// (the daemon for a user's proxy) checks it is that sandbox's.
    pub cgroup: u64,
}

const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The listener on loopback of `dest`'s family.
#[inline(always)]
fn listener(v4: bool, port: u16) -> Dest {
    Dest {
        addr: if v4 {
            canonical_v4([127, 0, 0, 1])
        } else {
            LOOPBACK6
        },
        port,
    }
}

/// Whether a connect (`send == false`) or an unconnected send
/// (`send == true`) to `dest` on a socket of `transport` is rewritten, and
/// to where. `None`: the ordinary decision stands.
#[inline(always)]
pub fn decide_redirect<P: PolicyView + ?Sized>(
    policy: &P,
    dest: &Dest,
    transport: Transport,
    send: bool,
) -> Option<Redirect> {
    let r = policy.redirects();
    if !r.is_on() {
        return None;
    }
    let v4 = dest.is_v4();
    if dest.port == DNS_PORT && !matches!(transport, Transport::Other) {
        let port = if v4 { r.dns4 } else { r.dns6 };
        if port == 0 {
            return None;
        }
        return Some(Redirect {
            to: listener(v4, port),
            reason: Reason::Resolver,
        });
    }
    if send || !matches!(transport, Transport::Tcp) {
        return None;
    }
    let d = decide_connect(policy, dest);
    if d.allow || !matches!(d.reason, Reason::NotAllowed) || never_allowed(&dest.addr).is_some() {
        return None;
    }
    let port = if v4 { r.tcp4 } else { r.tcp6 };
    if port == 0 {
        return None;
    }
    Some(Redirect {
        to: listener(v4, port),
        reason: Reason::Transparent,
    })
}

/// Whether `seen` (a peer or datagram source a socket is about to be told)
/// is one of the sandbox's listeners, so that the socket's [`Original`]
/// record, if it has one, is shown instead.
#[inline(always)]
pub fn is_listener(r: &Redirects, seen: &Dest) -> bool {
    if !r.is_on() || seen.port == 0 {
        return false;
    }
    let v4 = seen.is_v4();
    let ports = if v4 {
        [r.tcp4, r.dns4]
    } else {
        [r.tcp6, r.dns6]
    };
    if seen.port != ports[0] && seen.port != ports[1] {
        return false;
    }
    let want = listener(v4, seen.port);
    let mut i = 0;
    let mut same = true;
    while i < 16 {
        same &= want.addr[i] == seen.addr[i];
        i += 1;
    }
    same
}

#[cfg(test)]
mod tests;
