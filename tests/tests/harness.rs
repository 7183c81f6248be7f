//! Self-test of the harness (no agent needed): the fixture comes up, every
//! network vector reaches the server oracle when not sandboxed, and the oracle
//! attributes traffic to the right port / id / tag only.

use std::path::PathBuf;

use nono_tests::oracle::Proto;
use nono_tests::runner::{Harness, RunAs};
use nono_tests::vectors::{self, Attempt, NETWORK_VECTORS};

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");

fn harness() -> Harness {
    Harness::with_agent(PROBE, PathBuf::from("/nonexistent/nono-agent"))
}

#[test]
fn every_vector_reaches_the_oracle_outside_a_sandbox() {
    let h = harness();
    for v in NETWORK_VECTORS {
        vectors::assert_reachable_outside(&h, *v);
    }
}

/// The unprivileged plumbing (setpriv, a fresh uid, a probe any user can
/// execute) works: tcp4 as that user reaches the oracle.
#[test]
fn unprivileged_probe_reaches_the_oracle_outside_a_sandbox() {
    let h = harness();
    let user = RunAs::fresh();
    let a = Attempt::new(&h, vectors::find("tcp4"));
    let (r, out) = h.probe_outside_as(user, &a.args);
    h.oracle.settle();
    let (n, what) = a.observed(&h);
    assert!(
        r.ok && n > 0 && r.raw["uid"] == user.uid,
        "tcp4 as uid {}: probe {}; server saw {what}\n{}",
        user.uid,
        r.raw,
        out.describe()
    );
}

#[test]
fn oracle_attribution_is_exact() {
    let h = harness();
    let a = Attempt::new(&h, vectors::find("udp-sendmmsg"));
    let b = Attempt::new(&h, vectors::find("tcp4"));
    let (r, out) = h.probe_outside(&a.args);
    assert!(r.ok, "{}", out.describe());
    h.oracle.settle();
    assert_eq!(
        h.oracle.packets_to(Proto::Udp, a.port),
        4,
        "4 datagrams sent"
    );
    assert_eq!(h.oracle.packets_to(Proto::Tcp, b.port), 0);
    assert_eq!(h.oracle.tcp_connections(b.port), 0);
    assert_eq!(h.oracle.tagged_frames(&a.tag), 0);
    assert_eq!(h.oracle.echo_requests(false, a.id), 0);
}

#[test]
fn fixture_is_removed_on_drop() {
    let (c, s) = {
        let h = harness();
        (h.fx.client.clone(), h.fx.server.clone())
    };
    for ns in [c, s] {
        assert!(
            !std::path::Path::new(&format!("/run/netns/{ns}")).exists(),
            "netns {ns} not removed"
        );
    }
}
