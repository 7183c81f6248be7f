//! Channel 5: Multicast membership reports.

use std::net::IpAddr;
use std::time::Duration;

use nono_tests::channels::fresh_groups;
use nono_tests::netns::{SERVER_V4, SERVER_V6};
use nono_tests::runner::{Enforcement, Harness, SandboxGuard};

use super::running::{probe_outside, sandbox_opts, sargs, what};
use super::{sandboxed, PROBE};

/// (probe `--how`, IPv6 group) for every join option.
const JOINS: &[(&str, bool)] = &[
    ("ip-add-membership", false),
    ("ip-add-source-membership", false),
    ("mcast-join-group", false),
    ("mcast-join-group", true),
    ("mcast-join-source-group", false),
    ("mcast-join-source-group", true),
    ("ipv6-join-group", true),
    ("ip-drop-membership", false),
];

fn mcast_args(h: &Harness, how: &str, group: IpAddr) -> Vec<String> {
    let source: IpAddr = if group.is_ipv4() {
        SERVER_V4.into()
    } else {
        SERVER_V6.into()
    };
    sargs(&[
        "mcast-join",
        "--how",
        how,
        "--iface",
        &h.fx.veth_client,
        "--group",
        &group.to_string(),
        "--source",
        &source.to_string(),
    ])
}

/// For each option in `joins`: outside (as the sandbox's user) the join
/// succeeds and IGMP / MLD reports naming a fresh group reach the test
/// host's sniffer; inside, every membership setsockopt fails with EPERM
/// and no report naming the group arrives. All options are tried before
/// failing, and the failure lists each.
fn multicast_case(e: Enforcement, profile: bool, joins: &[(&str, bool)]) {
    let h = Harness::new(PROBE);
    let opts = sandbox_opts(&h, e, profile, &[]);
    let mut guard = SandboxGuard::new();
    let mut problems = Vec::new();
    for &(how, v6) in joins {
        let pick = |g: (IpAddr, IpAddr)| if v6 { g.1 } else { g.0 };
        let label = format!(
            "{how} ({}), {}",
            if v6 { "v6" } else { "v4" },
            what(e, &opts)
        );
        let group = pick(fresh_groups());
        let (r, _) = probe_outside(&h, opts.user, &mcast_args(&h, how, group));
        h.oracle.settle();
        let n = h.oracle.membership_reports(group);
        if !(r.ok && n > 0) {
            problems.push(format!(
                "[{label}] OUTSIDE: join ok={} ({}), {n} reports naming {group}: the test could \
                 not detect a leak",
                r.ok, r.detail
            ));
            continue;
        }
        let group = pick(fresh_groups());
        let mark = h.oracle.mark();
        let (r, out) = sandboxed(&h, &opts, &mcast_args(&h, how, group), &mut guard);
        h.oracle.settle();
        std::thread::sleep(Duration::from_millis(300));
        let n = h.oracle.membership_reports(group);
        if n > 0 {
            problems.push(format!(
                "[{label}] LEAK: {n} IGMP/MLD reports naming {group} reached the test host \
                 (groups since the run: {:?}); probe {:?}",
                h.oracle.membership_groups_since(mark),
                r.steps()
            ));
        }
        let refused = r.steps().iter().all(|s| !s.1 && s.2 == Some(libc::EPERM));
        if !refused || r.steps().is_empty() {
            problems.push(format!(
                "[{label}] every membership option must fail with EPERM: {:?}\n{}",
                r.steps(),
                out.stderr
            ));
        }
        eprintln!("[{label}] inside: {n} reports; steps {:?}", r.steps());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

pub(super) fn multicast_membership_reports(e: Enforcement) {
    multicast_case(e, false, JOINS);
}

pub(super) fn multicast_membership_reports_profile(e: Enforcement) {
    multicast_case(
        e,
        true,
        &[("ip-add-membership", false), ("ipv6-join-group", true)],
    );
}
