//! Escape battery: every network vector must reach the server outside the
//! sandbox and be denied (EPERM/EACCES, nothing on the wire) inside it
//! (rerouting vectors: nothing on the wire, whatever the probe saw);
//! process-level escapes must not lift the confinement; loopback, connected
//! UDP with ancillary data and the proxy endpoint (UDP, bulk TCP) must keep
//! working.
//!
//! Needs root and a real kernel. Run with `cargo test -p nono-tests --test escape`.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nono_tests::netns::{PROXY_V4, SERVER_V4};
use nono_tests::oracle::{Proto, TcpCounter, TcpEcho, UdpReceiver};
use nono_tests::runner::{ExecOpts, Harness, ProbeResult, SandboxGuard};
use nono_tests::sys::{self, CmdOutput};
use nono_tests::vectors::{self, NETWORK_VECTORS, PROCESS_VECTORS};

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");
const ENFORCER: &str = "bpf";

macro_rules! network_vector_tests {
    ($($test:ident => $vector:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                vectors::check_network_vector(ENFORCER, PROBE, $vector);
            }
        )*
        /// Every vector in the table has a test above (and vice versa).
        #[test]
        fn network_vector_table_is_fully_covered() {
            let mut tested = vec![$($vector),*];
            let mut table: Vec<&str> = NETWORK_VECTORS.iter().map(|v| v.name).collect();
            tested.sort();
            table.sort();
            assert_eq!(tested, table, "escape.rs tests and vectors::NETWORK_VECTORS differ");
        }
    };
}

network_vector_tests! {
    vector_tcp4 => "tcp4",
    vector_tcp6 => "tcp6",
    vector_tcp_v4mapped => "tcp-v4mapped",
    vector_tcp_nonblock => "tcp-nonblock",
    vector_tcp_fastopen => "tcp-fastopen",
    vector_udp_sendto => "udp-sendto",
    vector_udp_sendmsg => "udp-sendmsg",
    vector_udp_sendmmsg => "udp-sendmmsg",
    vector_udp_connect_send => "udp-connect-send",
    vector_udp_connected_sendto => "udp-connected-sendto",
    vector_udp6_sendto => "udp6-sendto",
    vector_v4mapped_udp_sendto => "v4mapped-udp-sendto",
    vector_io_uring_connect => "io-uring-connect",
    vector_io_uring_sendmsg => "io-uring-sendmsg",
    vector_raw_socket => "raw-socket",
    vector_raw6_socket => "raw6-socket",
    vector_ping_socket => "ping-socket",
    vector_ping6_socket => "ping6-socket",
    vector_af_packet => "af-packet",
    vector_mptcp => "mptcp",
    vector_srh6_udp_sockopt => "srh6-udp-sockopt",
    vector_srh6_tcp_sockopt => "srh6-tcp-sockopt",
    vector_srh6_udp_connect_send => "srh6-udp-connect-send",
    vector_srh6_udp_cmsg => "srh6-udp-cmsg",
    vector_srh6_udp_pktoptions => "srh6-udp-pktoptions",
    vector_rh2_udp_sockopt => "rh2-udp-sockopt",
    vector_lsrr4_tcp_sockopt => "lsrr4-tcp-sockopt",
    vector_lsrr4_udp_sockopt => "lsrr4-udp-sockopt",
    vector_ssrr4_udp_sockopt => "ssrr4-udp-sockopt",
    vector_lsrr4_udp_cmsg => "lsrr4-udp-cmsg",
    vector_lsrr4_udp_connected_cmsg => "lsrr4-udp-connected-cmsg",
    vector_unicast_if_loopback4 => "unicast-if-loopback4",
    vector_pktinfo_loopback4 => "pktinfo-loopback4",
}

/// `--enforcer auto` must pick a working enforcer: spot-check two vectors.
#[test]
fn auto_enforcer_blocks_tcp4_and_udp_sendto() {
    let h = Harness::new(PROBE);
    for name in ["tcp4", "udp-sendto"] {
        let v = vectors::find(name);
        vectors::assert_reachable_outside(&h, v);
        vectors::assert_blocked_inside(&h, "auto", v);
    }
}

#[test]
fn process_vector_list_is_covered() {
    // daemonize, sub-cgroup, parent-cgroup, detach-bpf, proc-root-cgroup:
    // below; kill-agent: tests/serial.rs.
    assert_eq!(
        PROCESS_VECTORS,
        &[
            "daemonize",
            "sub-cgroup",
            "parent-cgroup",
            "detach-bpf",
            "kill-agent",
            "proc-root-cgroup"
        ]
    );
}

// ---------------------------------------------------------------------------
// Process vectors

/// Runs a process vector in a sandbox with a tcp4 follow-up connect to a fresh
/// port that has a listener, first proving tcp4 reaches the server outside.
/// Returns the probe result, agent output, and the port.
fn run_process_vector(
    h: &Harness,
    guard: &mut SandboxGuard,
    vector: &str,
    extra: &[String],
) -> (ProbeResult, CmdOutput, u16) {
    vectors::assert_reachable_outside(h, vectors::find("tcp4"));
    let port = h.fx.port();
    h.oracle.listen_tcp(port);
    let mut args = vec![
        vector.to_string(),
        "--target".into(),
        SERVER_V4.to_string(),
        "--port".into(),
        port.to_string(),
    ];
    args.extend_from_slice(extra);
    let (r, out) = h.probe_sandboxed(ENFORCER, &args);
    guard.track(&r);
    h.oracle.settle();
    (r, out, port)
}

fn assert_followup_blocked(h: &Harness, vector: &str, r: &ProbeResult, out: &CmdOutput, port: u16) {
    let pkts = h.oracle.packets_to(Proto::Tcp, port);
    let conns = h.oracle.tcp_connections(port);
    assert!(
        pkts == 0 && conns == 0,
        "[{vector}] LEAK: follow-up tcp4 connect reached the server ({pkts} packets, {conns} \
         connections)\nprobe: {}\nagent: {}",
        r.raw,
        out.describe()
    );
    assert!(
        r.denied(),
        "[{vector}] follow-up tcp4 connect should fail with EPERM, got ok={} errno={:?} {:?}\n\
         probe: {}\nagent: {}",
        r.ok,
        r.errno,
        r.detail,
        r.raw,
        out.describe()
    );
}

fn step<'a>(
    steps: &'a [(String, bool, Option<i32>, String)],
    name: &str,
) -> Option<&'a (String, bool, Option<i32>, String)> {
    steps.iter().find(|s| s.0 == name)
}

#[test]
fn process_daemonize() {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    let tmp = sys::TempDir::new("daemonize");
    let pidfile = tmp.path("grandchild.pid");
    let extra = vec![
        "--pidfile".to_string(),
        pidfile.display().to_string(),
        "--sleep".into(),
        "30".into(),
    ];
    let (r, out, port) = run_process_vector(&h, &mut guard, "daemonize", &extra);
    let gpid = r.raw["grandchild_pid"].as_i64().map(|p| p as i32);
    if let Some(p) = gpid {
        guard.pids.push(p);
    }
    assert!(
        !out.pipes_held_open,
        "[daemonize] agent stdout/stderr still held open after exit: a sandboxed process \
         survived\n{}",
        out.describe()
    );
    assert_followup_blocked(&h, "daemonize", &r, &out, port);
    let gpid = gpid.unwrap_or_else(|| panic!("[daemonize] no grandchild pid: {}", r.raw));
    assert!(
        r.steps()
            .first()
            .is_some_and(|_| r.raw["steps"][0]["reparented"] == true),
        "[daemonize] grandchild was not reparented before its attempt: {}",
        r.raw
    );
    let gone = sys::wait_until(Duration::from_secs(3), || !sys::pid_alive(gpid));
    assert!(
        gone,
        "[daemonize] grandchild pid {gpid} still alive after the agent exited (not killed at \
         exit)\n{}",
        out.describe()
    );
}

#[test]
fn process_sub_cgroup() {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    let (r, out, port) = run_process_vector(&h, &mut guard, "sub-cgroup", &[]);
    assert_followup_blocked(&h, "sub-cgroup", &r, &out, port);
    let cg = r.cgroup.clone().expect("NONO_CGROUP reported");
    assert!(
        !Path::new(&cg).exists(),
        "[sub-cgroup] sandbox cgroup {cg} (with child 'escape') not removed after exit; steps: \
         {:?}\n{}",
        r.steps(),
        out.describe()
    );
}

#[test]
fn process_parent_cgroup() {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    let (r, out, port) = run_process_vector(&h, &mut guard, "parent-cgroup", &[]);
    assert_followup_blocked(&h, "parent-cgroup", &r, &out, port);
    let steps = r.steps();
    for name in ["move-parent", "move-root"] {
        let s = step(&steps, name).unwrap_or_else(|| panic!("no step {name}: {}", r.raw));
        assert!(
            !s.1,
            "[parent-cgroup] sandboxed process could move itself out ({name}): {s:?}\n{}",
            r.raw
        );
    }
}

#[test]
fn process_detach_bpf() {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    let (r, out, port) = run_process_vector(&h, &mut guard, "detach-bpf", &[]);
    let steps = r.steps();
    // The decisive check first: did anything leave?
    assert_followup_blocked(&h, "detach-bpf", &r, &out, port);
    let succeeded: Vec<_> = steps
        .iter()
        .filter(|s| {
            s.1 && (s.0.starts_with("prog-detach")
                || s.0.starts_with("link-detach")
                || s.0.starts_with("obj-get")
                || s.0.starts_with("unlink")
                || s.0.starts_with("query"))
        })
        .collect();
    assert!(
        succeeded.is_empty(),
        "[detach-bpf] sandboxed process could manipulate its BPF enforcement (query/obj-get/\
         detach/unlink succeeded): {succeeded:#?}\nall steps: {steps:#?}"
    );
    assert!(
        step(&steps, "list-pins").is_some(),
        "[detach-bpf] NONO_BPF_PIN_DIR not set in the sandbox: {}",
        r.raw
    );
}

/// A uid-0 process without any capability, in the host's mount namespace,
/// for as long as this value lives (killed by pid on drop). Such processes
/// are common (services with an empty bounding set); a capability-less
/// sandboxed root process passes the ptrace access check for them, so their
/// `/proc/<pid>/root` leads into the host's mount namespace.
struct NoCapsHolder {
    child: Child,
    how: String,
}

impl NoCapsHolder {
    /// Uses `capsh` if it is in PATH, else `nono-probe hold-nocaps`
    /// (forced by `NONO_TESTS_NOCAPS_HELPER=probe`).
    fn start(probe: &str) -> NoCapsHolder {
        let force_probe = std::env::var("NONO_TESTS_NOCAPS_HELPER").is_ok_and(|v| v == "probe");
        let capsh = std::env::var_os("PATH")
            .filter(|_| !force_probe)
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("capsh"))
                    .find(|c| c.is_file())
            });
        let (mut cmd, how) = match capsh {
            Some(c) => {
                let mut cmd = Command::new(&c);
                cmd.args(["--drop=all", "--", "-c", "exec sleep 30"]);
                (
                    cmd,
                    format!("{} --drop=all -- -c 'exec sleep 30'", c.display()),
                )
            }
            None => {
                let mut cmd = Command::new(probe);
                cmd.args(["hold-nocaps", "--sleep", "30"]);
                (cmd, "nono-probe hold-nocaps --sleep 30".to_string())
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {how}: {e}"));
        let holder = NoCapsHolder { child, how };
        let pid = holder.pid();
        let status = |key: &str| -> Option<String> {
            let st = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            st.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        let ready = sys::wait_until(Duration::from_secs(5), || {
            ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"]
                .iter()
                .all(|k| status(k).is_some_and(|v| v.trim_start_matches('0').is_empty()))
                && status("Uid:").is_some_and(|u| u.split_whitespace().all(|x| x == "0"))
        });
        let own_mnt = fs::read_link("/proc/self/ns/mnt").ok();
        let its_mnt = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        assert!(
            ready && own_mnt.is_some() && own_mnt == its_mnt,
            "helper `{}` (pid {pid}) did not become a capability-less uid-0 process in the host \
             mount namespace: Uid {:?} CapEff {:?} CapPrm {:?} CapBnd {:?}, mnt ns {its_mnt:?} \
             (ours {own_mnt:?})",
            holder.how,
            status("Uid:"),
            status("CapEff:"),
            status("CapPrm:"),
            status("CapBnd:"),
        );
        holder
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for NoCapsHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// From inside the sandbox, write "0" into the host's cgroup2 `cgroup.procs`
/// through `/proc/<pid>/root` of every process (while a capability-less
/// uid-0 process runs in the host mount namespace), then connect: the
/// connect must stay blocked and the probe must still be in the sandbox's
/// cgroup.
#[test]
fn process_proc_root_cgroup() {
    let h = Harness::new(PROBE);
    let holder = NoCapsHolder::start(PROBE);
    let mut guard = SandboxGuard::new();
    let (r, out, port) = run_process_vector(&h, &mut guard, "proc-root-cgroup", &[]);
    let steps = r.steps();
    let scan = step(&steps, "scan")
        .map(|s| s.3.clone())
        .unwrap_or_default();
    let writes: Vec<_> = steps
        .iter()
        .filter(|s| s.0.starts_with("write "))
        .map(|s| format!("{} -> ok={} {}", s.0, s.1, s.3))
        .collect();
    let cg_after = r.raw["cgroup_after"]
        .as_str()
        .unwrap_or("<missing>")
        .to_string();
    let report = format!(
        "helper `{}` pid {} (uid 0, no capabilities); scan: {scan}; opened={} written={} via \
         pids {}; writes: {writes:#?}; /proc/self/cgroup afterwards: {cg_after:?}",
        holder.how,
        holder.pid(),
        r.raw["opened"],
        r.raw["written"],
        r.raw["opened_via_pids"],
    );
    eprintln!("[proc-root-cgroup] {report}");
    let pkts = h.oracle.packets_to(Proto::Tcp, port);
    let conns = h.oracle.tcp_connections(port);
    assert!(
        pkts == 0 && conns == 0,
        "[proc-root-cgroup] LEAK: after the cgroup.procs writes the tcp4 connect reached the \
         server ({pkts} packets, {conns} connections)\n{report}\nprobe: {}\nagent: {}",
        r.raw,
        out.describe()
    );
    let v2 = cg_after
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_else(|| panic!("[proc-root-cgroup] no cgroup2 line in {cg_after:?}"));
    assert!(
        v2.starts_with("0::/") && !v2.contains(".."),
        "[proc-root-cgroup] ESCAPE: the sandboxed process left the sandbox's cgroup \
         ({v2:?} is outside its cgroup namespace root)\n{report}"
    );
    assert_followup_blocked(&h, "proc-root-cgroup", &r, &out, port);
    drop(holder);
}

// ---------------------------------------------------------------------------
// What must keep working

/// A UDP socket connected to loopback sends with `sendmsg` carrying an
/// IP_TOS (v4) / IPV6_TCLASS (v6) control message and no destination
/// (msg_name NULL): the datagrams reach a receiver on loopback in the
/// client netns, outside and inside the sandbox.
#[test]
fn connected_udp_with_ancillary_data_reaches_loopback() {
    let h = Harness::new(PROBE);
    let mut guard = SandboxGuard::new();
    for (vector, ip) in [
        ("udp-connected-cmsg-tos", IpAddr::from(Ipv4Addr::LOCALHOST)),
        (
            "udp6-connected-cmsg-tclass",
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ),
    ] {
        let port = h.fx.port();
        let rx = UdpReceiver::bind(&h.fx.client, SocketAddr::new(ip, port));
        let args = vec![
            vector.to_string(),
            "--target".into(),
            ip.to_string(),
            "--port".into(),
            port.to_string(),
        ];
        let (r, out) = h.probe_outside(&args);
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 1),
            "[{vector}] outside the sandbox the loopback receiver got {:?}: {}\n{}",
            rx.datagrams(),
            r.raw,
            out.describe()
        );
        assert_eq!(
            rx.datagrams()[0].tos,
            Some(0x28),
            "[{vector}] the TOS/traffic class control message was not applied outside"
        );
        let (r, out) = h.probe_sandboxed(ENFORCER, &args);
        guard.track(&r);
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 2),
            "[{vector}] connected UDP with ancillary data to loopback must keep working in the \
             sandbox: receiver got {:?}; probe {}\n{}",
            rx.datagrams(),
            r.raw,
            out.describe()
        );
        assert_eq!(
            rx.datagrams()[1].tos,
            Some(0x28),
            "[{vector}] datagram from the sandbox arrived without its TOS/traffic class"
        );
    }
}

/// Plain `send()` on a UDP socket connected to the proxy endpoint arrives
/// at a receiver behind the proxy address.
#[test]
fn udp_send_to_proxy_endpoint_arrives() {
    let h = Harness::new(PROBE);
    let proxy = SocketAddr::new(PROXY_V4.into(), h.fx.port());
    let rx = UdpReceiver::bind(&h.fx.server, proxy);
    let args = vec![
        "udp-proxy-send".to_string(),
        "--proxy-endpoint".into(),
        proxy.to_string(),
    ];
    let (r, out) = h.probe_outside(&args);
    assert!(
        r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 1),
        "outside the sandbox the UDP receiver at {proxy} got {} datagrams: {}\n{}",
        rx.count(),
        r.raw,
        out.describe()
    );
    let opts = ExecOpts {
        enforcer: Some(ENFORCER.into()),
        proxy_endpoints: vec![proxy],
        in_client_netns: true,
        ..Default::default()
    };
    let mut guard = SandboxGuard::new();
    let (r, out) = h.probe_sandboxed_with(&opts, &args);
    guard.track(&r);
    assert!(
        r.ok && sys::wait_until(Duration::from_secs(2), || rx.count() == 2),
        "UDP send() to the proxy endpoint {proxy} must arrive from the sandbox: receiver got {} \
         datagrams in all; probe {}\n{}",
        rx.count(),
        r.raw,
        out.describe()
    );
}

/// A TCP connection to the proxy endpoint carries 1 MiB each way (the
/// client sends 1 MiB, an echo server returns it): per-packet egress
/// checks must not disturb bulk traffic.
#[test]
fn tcp_bulk_to_proxy_endpoint_both_ways() {
    const BYTES: usize = 1 << 20;
    let h = Harness::new(PROBE);
    let proxy = SocketAddr::new(PROXY_V4.into(), h.fx.port());
    let echo = TcpEcho::bind(&h.fx.server, proxy);
    let opts = ExecOpts {
        enforcer: Some(ENFORCER.into()),
        proxy_endpoints: vec![proxy],
        in_client_netns: true,
        ..Default::default()
    };
    let mut guard = SandboxGuard::new();
    let (r, out) = h.probe_sandboxed_with(
        &opts,
        &[
            "tcp-proxy-bulk".into(),
            "--proxy-endpoint".into(),
            proxy.to_string(),
            "--bytes".into(),
            BYTES.to_string(),
        ],
    );
    guard.track(&r);
    let stats = echo.stats();
    assert!(
        r.ok,
        "1 MiB each way through the proxy endpoint {proxy} must work in the sandbox: {}; echo \
         server (connections, bytes in, bytes out) = {stats:?}\n{}",
        r.raw,
        out.describe()
    );
    assert!(
        sys::wait_until(Duration::from_secs(2), || echo.stats() == (1, BYTES, BYTES)),
        "echo server saw (connections, bytes in, bytes out) = {:?}, expected (1, {BYTES}, \
         {BYTES})",
        echo.stats()
    );
}

/// Loopback (127.0.0.1, ::1, ::ffff:127.0.0.1) works in the sandbox, 127.0.0.2
/// does not. Uses a dual-stack listener on [::] in the CLIENT netns, so
/// 127.0.0.2 would be reachable if not denied (checked outside first).
#[test]
fn loopback_allowed_but_not_127_0_0_2() {
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    let lst = TcpCounter::bind(
        &h.fx.client,
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
        false,
    );
    let args = |v: &str| vec![v.to_string(), "--port".into(), port.to_string()];
    // Outside: all four reach the listener.
    for v in [
        "loopback4",
        "loopback6",
        "loopback-v4mapped",
        "loopback-127-0-0-2",
    ] {
        let before = lst.count();
        let (r, out) = h.probe_outside(&args(v));
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || lst.count() > before),
            "[{v}] outside the sandbox the loopback listener was not reached: {}\n{}",
            r.raw,
            out.describe()
        );
    }
    let mut guard = SandboxGuard::new();
    for v in ["loopback4", "loopback6", "loopback-v4mapped"] {
        let before = lst.count();
        let (r, out) = h.probe_sandboxed(ENFORCER, &args(v));
        guard.track(&r);
        assert!(
            r.ok && sys::wait_until(Duration::from_secs(2), || lst.count() > before),
            "[{v}] loopback must be allowed in the sandbox: {}\n{}",
            r.raw,
            out.describe()
        );
    }
    let before = lst.count();
    let (r, out) = h.probe_sandboxed(ENFORCER, &args("loopback-127-0-0-2"));
    guard.track(&r);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lst.count(),
        before,
        "[loopback-127-0-0-2] LEAK: 127.0.0.2 reached the listener from the sandbox: {}\n{}",
        r.raw,
        out.describe()
    );
    assert!(
        r.denied(),
        "[loopback-127-0-0-2] expected EPERM: {}\n{}",
        r.raw,
        out.describe()
    );
}

/// The proxy endpoint is reachable from the sandbox; the same address on
/// another port, and the server's address on the proxy port, are not.
#[test]
fn proxy_endpoint_allowed_exactly() {
    let h = Harness::new(PROBE);
    let proxy = h.proxy_endpoint();
    let other = h.proxy_endpoint(); // listener, but not allowed
    let opts = ExecOpts {
        enforcer: Some(ENFORCER.into()),
        proxy_endpoints: vec![proxy],
        in_client_netns: true,
        ..Default::default()
    };
    let mut guard = SandboxGuard::new();
    let (r, out) = h.probe_sandboxed_with(
        &opts,
        &["proxy".into(), "--proxy-endpoint".into(), proxy.to_string()],
    );
    guard.track(&r);
    assert!(
        r.ok,
        "proxy endpoint {proxy} must be reachable: {}\n{}",
        r.raw,
        out.describe()
    );
    h.oracle.settle();
    assert_eq!(
        h.oracle.tcp_connections(proxy.port()),
        1,
        "server did not see the proxy connection"
    );
    let deny = [
        other,
        SocketAddr::new(SERVER_V4.into(), proxy.port()),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 3)), proxy.port()),
    ];
    for sa in deny {
        let (r, out) = h.probe_sandboxed_with(
            &opts,
            &["proxy".into(), "--proxy-endpoint".into(), sa.to_string()],
        );
        guard.track(&r);
        assert!(
            r.denied(),
            "{sa} must be denied when only {proxy} is allowed: {}\n{}",
            r.raw,
            out.describe()
        );
    }
    h.oracle.settle();
    assert_eq!(h.oracle.tcp_connections(other.port()), 0, "LEAK to {other}");
    assert_eq!(
        h.oracle.tcp_connections(proxy.port()),
        1,
        "LEAK: {} reached the proxy port",
        SERVER_V4
    );
    // No leftovers for this sandbox.
    if let Some(cg) = &r.cgroup {
        assert!(!Path::new(cg).exists(), "cgroup {cg} left after exit");
    }
    if let Some(p) = &r.pin_dir {
        assert!(fs::metadata(p).is_err(), "pin dir {p} left after exit");
    }
}
