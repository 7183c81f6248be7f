//! `sendmsg` ancillary data: the one table of control messages the sandbox
//! may not send.
//!
//! Only the seccomp supervisor reads control messages; under the BPF
//! enforcer the egress program judges the packets they produce instead.

use super::options::sockopt::*;
use super::{Decision, Reason};

/// When a control message of [`REFUSED_CONTROL`] is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRule {
    /// Whatever its data.
    Refuse,
    /// When the 32-bit interface index at this byte offset of the data is
    /// not 0 (a chosen outgoing interface, which sends even 127.0.0.1 out
    /// of a real device). Data too short to hold it chooses none.
    IfindexAt(usize),
    /// Unless the credentials name the sender itself, as the kernel would
    /// check for an unprivileged sender.
    OwnCredentials,
}

/// One entry of [`REFUSED_CONTROL`]: `cmsg_type` `ty` at `cmsg_level`
/// `level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusedControl {
    /// `cmsg_level`.
    pub level: i32,
    /// `cmsg_type`.
    pub ty: i32,
    /// When it is refused.
    pub rule: ControlRule,
    /// The denial reason: what the message would have done, as the
    /// setsockopt table names the same effect.
    pub reason: Reason,
}

const fn refused(level: i32, ty: i32, rule: ControlRule, reason: Reason) -> RefusedControl {
    RefusedControl {
        level,
        ty,
        rule,
        reason,
    }
}

/// The control messages the sandbox may not send:
///
/// - those that route a packet to an address the send never named (IPv4
///   options with source routes, IPv6 routing headers);
/// - a chosen outgoing interface (`IP_PKTINFO`, `IPV6_PKTINFO` with an
///   interface index): there is no egress check behind the supervisor;
/// - `SCM_CREDENTIALS` naming another process: the supervisor sends with
///   its own rights, so it checks what the kernel would have checked for
///   the sandbox.
pub const REFUSED_CONTROL: [RefusedControl; 8] = {
    use ControlRule::*;
    use Reason::{ForeignCredentials, LoopbackOffDevice, SocketOption};
    [
        refused(SOL_IP, IP_OPTIONS, Refuse, SocketOption),
        refused(SOL_IP, IP_RETOPTS, Refuse, SocketOption),
        // struct in_pktinfo { int ipi_ifindex; ... }
        refused(SOL_IP, IP_PKTINFO, IfindexAt(0), LoopbackOffDevice),
        refused(SOL_IPV6, IPV6_2292RTHDR, Refuse, SocketOption),
        refused(SOL_IPV6, IPV6_2292PKTOPTIONS, Refuse, SocketOption),
        refused(SOL_IPV6, IPV6_RTHDR, Refuse, SocketOption),
        // struct in6_pktinfo { struct in6_addr ipi6_addr; int ipi6_ifindex; }
        refused(SOL_IPV6, IPV6_PKTINFO, IfindexAt(16), LoopbackOffDevice),
        refused(
            SOL_SOCKET,
            SCM_CREDENTIALS,
            OwnCredentials,
            ForeignCredentials,
        ),
    ]
};

/// What the enforcer knows about a control message beyond its level, type
/// and data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlContext {
    /// `SCM_CREDENTIALS` data names the sending process itself (its pid,
    /// and uid and gid it may claim).
    pub names_sender: bool,
}

/// Decide one control message (`data` is what follows its header) against
/// [`REFUSED_CONTROL`].
#[inline(always)]
pub fn decide_control(level: i32, ty: i32, data: &[u8], ctx: ControlContext) -> Decision {
    let mut i = 0;
    while i < REFUSED_CONTROL.len() {
        let e = REFUSED_CONTROL[i];
        if e.level == level && e.ty == ty {
            let refuse = match e.rule {
                ControlRule::Refuse => true,
                ControlRule::IfindexAt(at) => match data.get(at..at + 4) {
                    Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) != 0,
                    None => false,
                },
                ControlRule::OwnCredentials => !ctx.names_sender,
            };
            return if refuse {
                Decision::deny(e.reason)
            } else {
                Decision::allow(Reason::OptionAllowed)
            };
        }
        i += 1;
    }
    Decision::allow(Reason::OptionAllowed)
}
