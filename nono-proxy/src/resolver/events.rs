//! The resolver's decisions as proxy events (hook `dns`), so that a
//! refused name shows in the sandbox's events, summary and notices like a
//! refused connection does.

use std::sync::Arc;
use std::time::Duration;

use super::answer::Outcome;
use crate::event::{Hook, ProxyEvent, Reason, Verdict};

/// The events of one decision: `deny` for a refused name or type,
/// `would-deny` then `allow` for a name audit mode let through, `allow`
/// for an answered one. Malformed messages give none (nothing was asked).
pub fn events(sandbox: &Arc<str>, outcome: &Outcome) -> Vec<ProxyEvent> {
    let ev = |verdict, reason, rule, host: &str| ProxyEvent {
        sandbox: sandbox.clone(),
        hook: Hook::Dns,
        verdict,
        reason,
        rule,
        host: host.to_string(),
        port: 53,
        addr: None,
        bytes_up: 0,
        bytes_down: 0,
        duration: Duration::ZERO,
    };
    match outcome {
        Outcome::Answered {
            name,
            qtype,
            addr,
            rule,
            audited,
        } => {
            let mut v = Vec::new();
            if let Some(r) = audited {
                v.push(ev(
                    Verdict::WouldDeny,
                    Reason::Refused(r.clone()),
                    r.rule(),
                    name,
                ));
            }
            v.push(ev(
                Verdict::Allow,
                Reason::Dns(format!("answered {qtype} with {addr}")),
                rule.clone(),
                name,
            ));
            v
        }
        Outcome::NoData { name, qtype } => vec![ev(
            Verdict::Allow,
            Reason::Dns(format!("{qtype}: empty answer")),
            None,
            name,
        )],
        Outcome::Refused { name, qtype, why } => vec![ev(
            Verdict::Deny,
            Reason::Dns(format!("{qtype} refused: {why}")),
            None,
            name,
        )],
        Outcome::NotAllowed {
            name,
            qtype,
            refusal,
        } => vec![match refusal {
            Some(r) => ev(Verdict::Deny, Reason::Refused(r.clone()), r.rule(), name),
            None => ev(
                Verdict::Deny,
                Reason::Dns(format!("{qtype}: not a host name (NXDOMAIN)")),
                None,
                name,
            ),
        }],
        Outcome::Malformed(_) => Vec::new(),
    }
}
