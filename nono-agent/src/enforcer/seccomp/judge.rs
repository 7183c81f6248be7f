//! The supervisor's judging: pure functions from what a notification asked
//! (the registers, and whatever the supervisor copied out of the target) to
//! a verdict with a [`Reason`].
//!
//! Every decision is one of `nono_common`'s, so the supervisor refuses what
//! the BPF programs refuse; what is left here is reading the call's
//! arguments as the kernel would (which address family, which bytes) and
//! the supervisor's own answers (errno, rewrites). No I/O: the supervisor
//! copies, judges with these, then performs.

use nono_common::{
    consts, decide_bind, decide_connect, decide_control, decide_redirect, decide_setsockopt,
    decide_socket, decide_socketpair, sockopt, ControlContext, ControlRule, Dest, PolicyView,
    Reason, Transport, REFUSED_CONTROL,
};

use super::filter::{option_context, Mode};

/// A refused call, reported as an event and answered with `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The answer to the call.
    pub errno: i32,
    /// Why, for the event.
    pub reason: Reason,
    /// The destination or local address judged, when there is one.
    pub dest: Option<Dest>,
}

impl Denial {
    const fn eperm(reason: Reason) -> Self {
        Self {
            errno: libc::EPERM,
            reason,
            dest: None,
        }
    }
}

/// Why a call is not performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed, as the kernel would have refused it (no event).
    Invalid(i32),
    /// Refused by the policy.
    Denied(Denial),
}

/// Whether sockets of `domain` are judged by address (and get the inbound
/// filter).
pub fn is_inet(domain: u32) -> bool {
    domain == consts::AF_INET || domain == consts::AF_INET6
}

/// A `socket` (`pair` false) or `socketpair` call. Only calls the filter
/// refuses reach the supervisor, and it refuses all of them: one the table
/// allows (the filter and the table drifting apart, which a test rules
/// out) is reported as [`Reason::SocketFamily`].
pub fn socket(pair: bool, family: u32, ty: u32, protocol: u32) -> Denial {
    let d = if pair {
        decide_socketpair(family, ty, protocol)
    } else {
        decide_socket(family, ty, protocol)
    };
    Denial::eperm(if d.allow {
        Reason::SocketFamily
    } else {
        d.reason
    })
}

/// A `setsockopt` call. As for [`socket`], only refused ones reach the
/// supervisor; one the table allows is reported as
/// [`Reason::SocketOption`].
pub fn setsockopt(level: i32, optname: i32) -> Denial {
    let d = decide_setsockopt(level, optname, option_context(Mode::Notify));
    Denial::eperm(if d.allow {
        Reason::SocketOption
    } else {
        d.reason
    })
}

/// Whether a control message is judged by the credentials it names (so
/// the supervisor must read the target's ids first).
pub fn names_credentials(level: i32, ty: i32) -> bool {
    REFUSED_CONTROL
        .iter()
        .any(|e| e.level == level && e.ty == ty && e.rule == ControlRule::OwnCredentials)
}

/// One control message of a send (`data` is what follows its header);
/// `names_sender` as [`ControlContext`].
pub fn control_message(level: i32, ty: i32, data: &[u8], names_sender: bool) -> Result<(), Denial> {
    let d = decide_control(level, ty, data, ControlContext { names_sender });
    if d.allow {
        Ok(())
    } else {
        Err(Denial::eperm(d.reason))
    }
}

/// Whether a control message is the sender's credentials, which the
/// supervisor drops once judged: the send is made with the target's
/// credentials stamped by the supervisor or a child of it.
pub fn is_credentials(level: i32, ty: i32) -> bool {
    level == sockopt::SOL_SOCKET && ty == sockopt::SCM_CREDENTIALS
}

/// A sockaddr's family field, if it is long enough to have one.
fn family_of(addr: &[u8]) -> Option<u32> {
    Some(u16::from_ne_bytes([*addr.first()?, *addr.get(1)?]) as u32)
}

/// The local (bind) address a sockaddr names for a socket of `domain`, or
/// None when the kernel will refuse it for that socket anyway. An `AF_INET`
/// socket also takes `AF_UNSPEC` (as `INADDR_ANY` only).
pub fn inet_dest(domain: u32, addr: &[u8]) -> Option<Dest> {
    let family = family_of(addr)?;
    if domain == consts::AF_INET
        && (family == consts::AF_INET || family == libc::AF_UNSPEC as u32)
        && addr.len() >= 16
    {
        return Some(Dest::v4(
            [addr[4], addr[5], addr[6], addr[7]],
            u16::from_be_bytes([addr[2], addr[3]]),
        ));
    }
    if domain == consts::AF_INET6 && family == consts::AF_INET6 && addr.len() >= 24 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&addr[8..24]);
        return Some(Dest::v6(o, u16::from_be_bytes([addr[2], addr[3]])));
    }
    None
}

/// The same sockaddr (family, port, v6 flow info and scope) with the
/// loopback address of its family in place of the wildcard: 127.0.0.1,
/// ::1, or ::ffff:127.0.0.1 for the v4-mapped wildcard.
pub fn loopback_of(addr: &[u8]) -> Vec<u8> {
    let mut a = addr.to_vec();
    let family = family_of(&a).unwrap_or(0);
    if family == consts::AF_INET6 && a.len() >= 24 {
        if a[8..20] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            a[20..24].copy_from_slice(&[127, 0, 0, 1]);
        } else {
            a[8..24].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        }
    } else if a.len() >= 8 {
        // AF_INET (or AF_UNSPEC, which an inet socket binds as AF_INET).
        a[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        a[4..8].copy_from_slice(&[127, 0, 0, 1]);
    }
    a
}

/// What to do with a `bind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    /// Not an inet socket: the target's own call goes ahead (a unix path is
    /// created with its credentials, umask and view of the file system).
    Continue,
    /// Bind the supervisor's copy of the socket to this address.
    To(Vec<u8>),
}

/// A `bind` on a socket of `domain` to `addr`, by [`decide_bind`];
/// `filtered`: the socket carries the inbound filter. Without it a
/// wildcard bind becomes a bind to loopback (same port), so the listener
/// is loopback-only anyway. An address the kernel will refuse for the
/// socket is passed on for it to refuse.
pub fn bind(domain: u32, addr: Vec<u8>, filtered: bool) -> Result<Bind, Denial> {
    if !is_inet(domain) {
        return Ok(Bind::Continue);
    }
    let Some(local) = inet_dest(domain, &addr) else {
        return Ok(Bind::To(addr));
    };
    let d = decide_bind(&local);
    if !d.allow {
        return Err(Denial {
            dest: Some(local),
            ..Denial::eperm(d.reason)
        });
    }
    if d.reason == Reason::Wildcard && !filtered {
        return Ok(Bind::To(loopback_of(&addr)));
    }
    Ok(Bind::To(addr))
}

/// A `listen` on an inet socket of `domain` whose local name (getsockname)
/// is `name`; `filtered` as for [`bind`]. Returns where to bind first: an
/// unbound socket without the inbound filter would autobind to the
/// wildcard, so it is bound to loopback instead. A bound socket must be
/// bound where `bind` allows, and not to the wildcard without the filter.
pub fn listen(domain: u32, name: &[u8], filtered: bool) -> Result<Option<Vec<u8>>, Denial> {
    let Some(local) = inet_dest(domain, name) else {
        return Ok(None);
    };
    let d = decide_bind(&local);
    if local.port == 0 && !filtered {
        return Ok(Some(loopback_of(name)));
    }
    if !d.allow || (!filtered && d.reason == Reason::Wildcard) {
        let reason = if d.allow {
            Reason::WildcardListener
        } else {
            d.reason
        };
        return Err(Denial {
            dest: Some(local),
            ..Denial::eperm(reason)
        });
    }
    Ok(None)
}

/// What a destination (of `connect`, `sendto`, a `sendmsg` name) turned out
/// to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Nothing to judge: used as given. A socket neither inet nor unix; an
    /// abstract or unnamed unix address; `AF_UNSPEC` (dissolving an
    /// association); a family the kernel refuses on an inet socket.
    AsGiven,
    /// A unix path: judged by the socket inode it names ([`unix_socket`]).
    UnixPath,
    /// An inet destination the policy allows.
    Allowed(Dest),
}

/// A destination `addr` for a socket of `domain`, read as the kernel reads
/// it (`send`: a send, where an inet socket also takes an `AF_UNSPEC`
/// address as IPv4), judged by [`decide_connect`].
pub fn destination<P: PolicyView + ?Sized>(
    policy: &P,
    domain: u32,
    addr: &[u8],
    send: bool,
) -> Result<Destination, Refusal> {
    let Some(family) = family_of(addr) else {
        return Err(Refusal::Invalid(libc::EINVAL));
    };
    if !is_inet(domain) {
        if domain != consts::AF_UNIX || addr.get(2).is_none_or(|&b| b == 0) {
            return Ok(Destination::AsGiven);
        }
        return Ok(Destination::UnixPath);
    }
    let Some(dest) = inet_destination(family, addr, send)? else {
        return Ok(Destination::AsGiven);
    };
    let d = decide_connect(policy, &dest);
    if d.allow {
        Ok(Destination::Allowed(dest))
    } else {
        Err(Refusal::Denied(Denial {
            dest: Some(dest),
            ..Denial::eperm(d.reason)
        }))
    }
}

/// The inet destination a sockaddr of `family` names on an inet socket
/// (`send`: an `AF_UNSPEC` address of IPv4 length counts as IPv4), `None`
/// for a family the kernel does not read as one.
fn inet_destination(family: u32, addr: &[u8], send: bool) -> Result<Option<Dest>, Refusal> {
    let unspec = libc::AF_UNSPEC as u32;
    if family == consts::AF_INET || (send && family == unspec && addr.len() >= 16) {
        if addr.len() < 16 {
            return Err(Refusal::Invalid(libc::EINVAL));
        }
        return Ok(Some(Dest::v4(
            [addr[4], addr[5], addr[6], addr[7]],
            u16::from_be_bytes([addr[2], addr[3]]),
        )));
    }
    if family == consts::AF_INET6 {
        if addr.len() < 24 {
            return Err(Refusal::Invalid(libc::EINVAL));
        }
        let mut o = [0u8; 16];
        o.copy_from_slice(&addr[8..24]);
        return Ok(Some(Dest::v6(o, u16::from_be_bytes([addr[2], addr[3]]))));
    }
    Ok(None)
}

/// A rewritten destination (transparent mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirected {
    /// The sockaddr to use instead, in the family the caller gave (an
    /// `AF_INET6` socket dialling a v4-mapped address gets
    /// `::ffff:127.0.0.1`).
    pub addr: Vec<u8>,
    /// What the caller dialled.
    pub original: Dest,
    /// [`Reason::Transparent`] (the proxy's listener) or
    /// [`Reason::Resolver`].
    pub reason: Reason,
}

/// Whether a connect or send to `addr` on an inet socket of `domain` and
/// type `ty` goes to one of the sandbox's listeners instead
/// (`nono_common::decide_redirect`, as the BPF programs decide).
pub fn redirect<P: PolicyView + ?Sized>(
    policy: &P,
    domain: u32,
    ty: u32,
    addr: &[u8],
    send: bool,
) -> Option<Redirected> {
    if !is_inet(domain) || !policy.redirects().is_on() {
        return None;
    }
    let family = family_of(addr)?;
    let original = inet_destination(family, addr, send).ok()??;
    // The hooks see the resolved protocol; a socket here is TCP or UDP by
    // type (the filter refuses every other inet socket at creation).
    let r = decide_redirect(policy, &original, Transport::of(ty, 0), send)?;
    let port = r.to.port.to_be_bytes();
    let a = if family == consts::AF_INET6 {
        let mut a = vec![0u8; 28];
        a[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        a[2..4].copy_from_slice(&port);
        a[8..24].copy_from_slice(&r.to.addr);
        a
    } else {
        let mut a = vec![0u8; 16];
        a[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        a[2..4].copy_from_slice(&port);
        a[4..8].copy_from_slice(&r.to.addr[12..16]);
        a
    };
    Some(Redirected {
        addr: a,
        original,
        reason: r.reason,
    })
}

/// A unix socket named by path, by its (device, inode): the host daemons'
/// sockets in `denied` are refused with EACCES, as a hidden file would be.
pub fn unix_socket(denied: &[(u64, u64)], id: (u64, u64)) -> Result<(), Denial> {
    if denied.contains(&id) {
        return Err(Denial {
            errno: libc::EACCES,
            reason: Reason::DaemonSocket,
            dest: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
