//! The supervisor's denial events, in the same shape as the BPF programs'
//! (see `crate::events`), with reasons from `nono_common::Reason`.

use nono_common::{Dest, Reason};
use std::os::fd::AsFd as _;
use std::time::SystemTime;

use super::perform::{sockopt_int, Sock};
use super::Supervisor;
use crate::enforcer::seccomp::notify::Notif;
use crate::events::EventRecord;

impl Supervisor {
    /// A denial on a socket the supervisor holds: its own family, type and
    /// protocol, as the BPF events report them.
    pub(super) fn socket_event(
        &self,
        n: &Notif,
        hook: &'static str,
        sock: &Sock,
        d: &Dest,
        reason: Reason,
    ) {
        let rec = self.socket_record(n, hook, sock, d, reason);
        let _ = self.events.send(rec.into_line());
    }

    /// An audit record: a destination the policy refuses, let through
    /// because the sandbox runs in audit mode (see
    /// `nono_common::audit_verdict`). The same fields as
    /// [`Self::socket_event`]'s denial.
    pub(super) fn would_deny_event(
        &self,
        n: &Notif,
        hook: &'static str,
        sock: &Sock,
        d: &Dest,
        reason: Reason,
    ) {
        let rec = EventRecord {
            verdict: crate::events::WOULD_DENY,
            ..self.socket_record(n, hook, sock, d, reason)
        };
        let _ = self.events.send(rec.into_line());
    }

    /// The record of a decision on `sock` towards `d`.
    fn socket_record(
        &self,
        n: &Notif,
        hook: &'static str,
        sock: &Sock,
        d: &Dest,
        reason: Reason,
    ) -> EventRecord {
        let ty = sockopt_int(sock.fd.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE).ok();
        let proto = sockopt_int(sock.fd.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).ok();
        EventRecord {
            family: Some(crate::events::family_name(sock.domain)),
            sock_type: ty.map(|t| crate::events::type_name(t as u32)),
            protocol: proto.map(|p| p as u32),
            addr: Some(crate::events::addr_string(&d.addr)),
            port: Some(d.port),
            ..self.denial(n, hook, reason)
        }
    }

    /// A denial by this supervisor, with the socket fields left empty.
    fn denial(&self, n: &Notif, hook: &'static str, reason: Reason) -> EventRecord {
        EventRecord {
            ts: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            sandbox: self.sandbox.clone(),
            source: "seccomp",
            hook,
            verdict: "deny",
            reason: reason.name(),
            pid: n.pid,
            tgid: tgid_of(n.pid).unwrap_or(n.pid),
            comm: comm_of(n.pid),
            cgroup_id: 0,
            family: None,
            sock_type: None,
            protocol: None,
            level: None,
            optname: None,
            addr: None,
            port: None,
        }
    }

    /// A denial naming a socket family (and type, protocol, destination
    /// when known).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn event(
        &self,
        n: &Notif,
        hook: &'static str,
        family: u32,
        ty: Option<u32>,
        proto: Option<u32>,
        dest: Option<&Dest>,
        reason: Reason,
    ) {
        let rec = EventRecord {
            family: Some(crate::events::family_name(family)),
            sock_type: ty.map(crate::events::type_name),
            protocol: proto,
            addr: dest.map(|d| crate::events::addr_string(&d.addr)),
            port: dest.map(|d| d.port),
            ..self.denial(n, hook, reason)
        };
        let _ = self.events.send(rec.into_line());
    }

    /// A denial of a socket option or control message, by level and name
    /// (or type).
    pub(super) fn event_sockopt(
        &self,
        n: &Notif,
        hook: &'static str,
        level: i32,
        optname: i32,
        reason: Reason,
    ) {
        let rec = EventRecord {
            level: Some(level),
            optname: Some(optname),
            ..self.denial(n, hook, reason)
        };
        let _ = self.events.send(rec.into_line());
    }
}

/// The thread group (process) of thread `pid`.
pub(super) fn tgid_of(pid: u32) -> Option<u32> {
    let s = crate::util::read_small_path(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn comm_of(pid: u32) -> String {
    crate::util::read_small_path(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}
