//! Audit mode: which refusals may be let through (and recorded as
//! "would-deny") when a sandbox runs with its policy's audit flag, and which
//! never may.
//!
//! Shared by the BPF programs, the seccomp supervisor and the proxy, so that
//! "what audit still refuses" has one answer whichever layer asks. Audit
//! exists to learn what a command needs, so it only lifts refusals a rule
//! could lift (a destination no allow rule names): addresses that no rule
//! can ever open (link-local, where cloud metadata lives, well-known
//! metadata addresses, multicast, broadcast, unspecified) stay refused, and
//! so does every hardening refusal that is not about a destination (socket
//! kinds, routing options, daemon sockets, forged credentials, cgroups
//! without a policy): those keep what audit records truthful (a
//! source-routed packet would not go where the record says) and protect the
//! host rather than express a policy.

use crate::decision::{Decision, Reason};
use crate::types::is_v4_mapped;

/// Wire value of a policy's `audit` field (and a BPF settings entry's)
/// turning audit mode on.
pub const AUDIT_ON: u32 = 1;

/// Wire value of [`crate::DenyEvent::verdict`]: the operation was refused.
pub const EVENT_DENY: u16 = 0;
/// Wire value of [`crate::DenyEvent::verdict`]: the operation would have
/// been refused and was let through (audit mode).
pub const EVENT_WOULD_DENY: u16 = 1;

/// An address range no rule opens and audit never lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Never {
    /// IPv4 link-local 169.254.0.0/16 (cloud metadata: 169.254.169.254).
    LinkLocal4,
    /// Alibaba Cloud's metadata address 100.100.100.200.
    AlibabaMetadata,
    /// IPv4 multicast 224.0.0.0/4.
    Multicast4,
    /// The IPv4 limited broadcast 255.255.255.255.
    Broadcast,
    /// 0.0.0.0/8 ("this network"; 0.0.0.0 reaches the host itself).
    ThisNetwork,
    /// IPv6 link-local fe80::/10.
    LinkLocal6,
    /// AWS's IPv6 metadata address fd00:ec2::254.
    AwsMetadata6,
    /// IPv6 multicast ff00::/8.
    Multicast6,
    /// The IPv6 unspecified address `::`.
    Unspecified6,
}

impl Never {
    /// How the range is described to users.
    pub const fn description(self) -> &'static str {
        match self {
            Self::LinkLocal4 => "link-local 169.254.0.0/16 (cloud metadata)",
            Self::AlibabaMetadata => "the Alibaba Cloud metadata address",
            Self::Multicast4 | Self::Multicast6 => "multicast",
            Self::Broadcast => "broadcast",
            Self::ThisNetwork => "0.0.0.0/8 (this network)",
            Self::LinkLocal6 => "link-local fe80::/10",
            Self::AwsMetadata6 => "the AWS IPv6 metadata address fd00:ec2::254",
            Self::Unspecified6 => "the unspecified address",
        }
    }
}

/// The range of `a` (a canonical address: v4 as v4-mapped) that no rule
/// opens, if any. IPv4 carried in IPv4-compatible (`::a.b.c.d`) and NAT64
/// (`64:ff9b::a.b.c.d`) form is judged as that IPv4 address, since a NAT64
/// gateway turns `64:ff9b::a9fe:a9fe` into 169.254.169.254.
#[inline(always)]
pub fn never_allowed(a: &[u8; 16]) -> Option<Never> {
    let zero12 = {
        let mut z = true;
        let mut i = 0;
        while i < 12 {
            z &= a[i] == 0;
            i += 1;
        }
        z
    };
    let nat64 = a[0] == 0
        && a[1] == 0x64
        && a[2] == 0xff
        && a[3] == 0x9b
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0
        && a[11] == 0;
    // `::` and `::1` are IPv6 themselves, not IPv4-compatible forms.
    let v6_special = zero12 && a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] <= 1;
    if is_v4_mapped(a) || nat64 || (zero12 && !v6_special) {
        return never_v4([a[12], a[13], a[14], a[15]]);
    }
    if v6_special {
        return if a[15] == 0 {
            Some(Never::Unspecified6)
        } else {
            None
        };
    }
    if a[0] == 0xfe && (a[1] & 0xc0) == 0x80 {
        return Some(Never::LinkLocal6);
    }
    if a[0] == 0xff {
        return Some(Never::Multicast6);
    }
    // fd00:ec2::254
    let aws = a[0] == 0xfd
        && a[1] == 0
        && a[2] == 0x0e
        && a[3] == 0xc2
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0
        && a[11] == 0
        && a[12] == 0
        && a[13] == 0
        && a[14] == 0x02
        && a[15] == 0x54;
    if aws {
        return Some(Never::AwsMetadata6);
    }
    None
}

#[inline(always)]
fn never_v4(o: [u8; 4]) -> Option<Never> {
    if o[0] == 169 && o[1] == 254 {
        Some(Never::LinkLocal4)
    } else if o == [100, 100, 100, 200] {
        Some(Never::AlibabaMetadata)
    } else if (o[0] & 0xf0) == 224 {
        Some(Never::Multicast4)
    } else if o == [255, 255, 255, 255] {
        Some(Never::Broadcast)
    } else if o[0] == 0 {
        Some(Never::ThisNetwork)
    } else {
        None
    }
}

/// Whether audit may lift a refusal of this kind: only refusals about a
/// destination (or local address, or packet source) that some rule could
/// allow. Everything else stays refused in audit mode too.
#[inline(always)]
pub const fn auditable_reason(r: Reason) -> bool {
    matches!(
        r,
        Reason::NotAllowed
            | Reason::LoopbackPort
            | Reason::OtherLoopback
            | Reason::BindAddress
            | Reason::Inbound
    )
}

/// What an enforcer does with a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by the policy.
    Allow,
    /// Refused (and reported as `deny`).
    Deny,
    /// Refused by the policy, let through because the sandbox is in audit
    /// mode (and reported as `would-deny`).
    WouldDeny,
}

/// The verdict on `d`, a decision about address `addr` (the destination,
/// the local address of a bind, a packet's source), for a sandbox in audit
/// mode or not.
#[inline(always)]
pub fn audit_verdict(d: Decision, addr: &[u8; 16], audit: bool) -> Verdict {
    if d.allow {
        Verdict::Allow
    } else if audit && auditable_reason(d.reason) && never_allowed(addr).is_none() {
        Verdict::WouldDeny
    } else {
        Verdict::Deny
    }
}

#[cfg(test)]
mod tests;
