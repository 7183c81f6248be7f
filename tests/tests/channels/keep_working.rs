//! Over-blocking: the ordinary work must keep working.

use nono_tests::runner::{Enforcement, Harness, SandboxGuard};

use super::running::{sandbox_opts, sargs, what};
use super::{assert_outside_ok, sandboxed, PROBE};

/// Loopback servers and clients in one sandbox: TCP listeners on 0.0.0.0,
/// [::] (dual stack, reached on 127.0.0.1 too), 127.0.0.1, ::1 and from an
/// unbound listen(); UDP on the same; then a connection to the proxy
/// endpoint, which the test host accepts.
fn loopback_case(e: Enforcement, profile: bool) {
    let h = Harness::new(PROBE);
    let opts = sandbox_opts(&h, e, profile, &[]);
    let label = format!("loopback servers, {}", what(e, &opts));
    let args = sargs(&["loopback-selftest"]);
    assert_outside_ok(&h, opts.user, &args, &label);
    let mut guard = SandboxGuard::new();
    let (r, out) = sandboxed(&h, &opts, &args, &mut guard);
    // Documented limit: without CAP_NET_ADMIN no filter can go on a TCP
    // socket, so the unprivileged supervisor binds a `[::]` listener to ::1
    // and a v4 client gets ECONNREFUSED (README, "seccomp enforcer").
    let documented = |s: &(String, bool, Option<i32>, String)| {
        e == Enforcement::SeccompUser && s.0 == "tcp [::] <- 127.0.0.1" && s.2 == Some(111)
    };
    let steps = r.steps();
    let failed: Vec<_> = steps.iter().filter(|s| !s.1 && !documented(s)).collect();
    assert!(
        !steps.is_empty() && failed.is_empty(),
        "[{label}] loopback servers and clients inside one sandbox must work; failed: \
         {failed:#?}\n{}",
        out.describe()
    );
    let proxy = opts.proxy_endpoints[0];
    let (r, out) = sandboxed(
        &h,
        &opts,
        &sargs(&["proxy", "--proxy-endpoint", &proxy.to_string()]),
        &mut guard,
    );
    h.oracle.settle();
    assert!(
        r.ok && h.oracle.tcp_connections(proxy.port()) == 1,
        "[{label}] the proxy endpoint {proxy} must be reachable: {} ({} connections seen)\n{}",
        r.raw,
        h.oracle.tcp_connections(proxy.port()),
        out.describe()
    );
}

pub(super) fn loopback_servers_and_proxy_keep_working(e: Enforcement) {
    loopback_case(e, false);
}

pub(super) fn loopback_servers_keep_working_profile(e: Enforcement) {
    loopback_case(e, true);
}
