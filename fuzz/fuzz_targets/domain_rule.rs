//! `normalize_host`, `DomainRule` parsing and matching.
//!
//! Input: `PATTERN \n HOST \n` then two bytes of port (any may be missing).
//! Besides "no panic", checks the properties the rules rely on:
//! * a normalised name is a valid, lower-case LDH name without a trailing dot,
//!   at most 253 octets, and normalising it again changes nothing;
//! * ASCII case and one trailing dot never change the result (otherwise a
//!   deny rule could be dodged by spelling);
//! * a rule's own host part is normalised;
//! * `matches` agrees with the rule: exact equality, or a proper subdomain
//!   (never the apex, never a name that merely ends with the same letters);
//!   ports are the rule's, or 80/443.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nono_proxy::pattern::{normalize_host, DomainRule, HostPattern, DEFAULT_PORTS};
use nono_proxy::policy::{ProxyPolicy, Refusal, Rule, Target};

fn check_normalised(raw: &str, n: &str) {
    assert!(!n.is_empty() && n.len() <= 253, "{raw:?} -> {n:?}");
    assert!(!n.ends_with('.') && !n.starts_with('.'), "{raw:?} -> {n:?}");
    assert!(
        n.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'),
        "{raw:?} -> {n:?}"
    );
    for label in n.split('.') {
        assert!(
            !label.is_empty() && label.len() <= 63,
            "{raw:?} -> {n:?}: label {label:?}"
        );
        assert!(
            !label.starts_with('-') && !label.ends_with('-'),
            "{raw:?} -> {n:?}"
        );
    }
    assert_eq!(
        normalize_host(n).as_deref(),
        Ok(n),
        "normalising {raw:?} is not idempotent"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let pattern = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let host = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let rest = parts.next().unwrap_or_default();
    let port = match rest {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        [a] => *a as u16,
        [] => 443,
    };

    let norm = normalize_host(&host);
    if let Ok(n) = &norm {
        check_normalised(&host, n);
    }
    if host.is_ascii() {
        let upper = normalize_host(&host.to_ascii_uppercase());
        assert_eq!(
            upper.as_ref().ok(),
            norm.as_ref().ok(),
            "ASCII case changes the normalisation of {host:?}"
        );
    }
    if !host.ends_with('.') {
        let dotted = normalize_host(&format!("{host}."));
        assert_eq!(
            dotted.as_ref().ok(),
            norm.as_ref().ok(),
            "one trailing dot changes the normalisation of {host:?}"
        );
    }

    let Ok(rule) = pattern.parse::<DomainRule>() else {
        return;
    };
    assert_eq!(rule.text, pattern);
    assert_ne!(rule.port, Some(0));
    match &rule.host {
        HostPattern::Exact(e) | HostPattern::Subdomains(e) => check_normalised(&pattern, e),
    }
    // The rule matches its own name (exact rules) on its port.
    let own_port = rule.port.unwrap_or(443);
    if let HostPattern::Exact(e) = &rule.host {
        assert!(
            rule.matches(e, own_port),
            "{pattern:?} does not match {e:?}"
        );
    }
    if let HostPattern::Subdomains(s) = &rule.host {
        assert!(!rule.matches(s, own_port), "{pattern:?} matches its apex");
        let sub = format!("a.{s}");
        if sub.len() <= 253 {
            assert!(
                rule.matches(&sub, own_port),
                "{pattern:?} does not match {sub:?}"
            );
        }
    }

    let Ok(n) = norm else {
        return;
    };
    let m = rule.matches(&n, port);
    if m {
        match rule.port {
            Some(p) => assert_eq!(p, port),
            None => assert!(DEFAULT_PORTS.contains(&port)),
        }
        match &rule.host {
            HostPattern::Exact(e) => assert_eq!(e, &n),
            HostPattern::Subdomains(s) => {
                assert!(n.len() > s.len() + 1, "{pattern:?} matched {n:?}");
                assert!(n.ends_with(&format!(".{s}")), "{pattern:?} matched {n:?}");
            }
        }
    }
    // The policy's typed verdict names this rule exactly when it matches:
    // as the allowing rule, or (as a deny rule) as the refusing one.
    let target = Target::Name(n.clone());
    let allow = ProxyPolicy {
        allow: vec![rule.clone()],
        ..Default::default()
    };
    match allow.check_target(&target, port) {
        Ok(Rule::AllowDomain(r)) => assert!(m && r == rule, "{pattern:?} allowed {n:?}"),
        Ok(other) => panic!("{pattern:?}: allowed by {other}"),
        Err(Refusal::NotAllowed { .. }) => {
            assert!(!m && !rule.matches_host(&n), "{pattern:?} matches {n:?}")
        }
        Err(Refusal::PortNotAllowed { allowed, .. }) => {
            assert!(!m && rule.matches_host(&n), "{pattern:?} matches {n:?}");
            assert_eq!(allowed, rule.ports(), "{pattern:?}");
        }
        Err(e) => panic!("{pattern:?} vs {n:?}: {e}"),
    }
    let deny = ProxyPolicy {
        allow: vec![rule.clone()],
        deny: vec![rule.clone()],
        ..Default::default()
    };
    match deny.check_target(&target, port) {
        Err(e @ Refusal::Denied { .. }) => {
            assert!(m, "{pattern:?} denied {n:?}");
            assert_eq!(e.rule(), Some(Rule::DenyDomain(rule.clone())));
        }
        Err(Refusal::NotAllowed { .. } | Refusal::PortNotAllowed { .. }) => {
            assert!(!m, "{pattern:?} matches {n:?}")
        }
        other => panic!("{pattern:?} vs {n:?}: deny rule gave {other:?}"),
    }
    // Spelling never changes the verdict.
    if host.is_ascii() {
        if let Ok(u) = normalize_host(&host.to_ascii_uppercase()) {
            assert_eq!(rule.matches(&u, port), m);
        }
    }
});
