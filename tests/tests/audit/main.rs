//! `exec --audit` and `nono-agent learn`, with the receiving side as the
//! oracle: a scripted workload (HTTP clients to three pinned names, an IP
//! literal through the proxy, a direct TCP connection and a UDP datagram to
//! the test host, a loopback server on a port the policy does not list, a
//! write outside the profile) goes through in audit mode and is recorded as
//! would-deny, while cloud metadata (on a test host routed into the client
//! namespace, shown reachable outside the sandbox first) stays refused;
//! under the BPF enforcer directly, through a private daemon, and under the
//! seccomp supervisor. Then `learn` writes a profile under which the same
//! workload runs clean in enforcing mode while a fourth host is refused;
//! learning twice writes the same bytes; names the child makes up
//! (hostile Host headers and CONNECT targets) do not corrupt the profile.
//!
//! Needs root, a real kernel, python3, openssl, git and curl.
//! Run with `cargo test -p nono-tests --test audit`.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use nono_tests::daemon::Daemon;
use nono_tests::oracle::{TcpCounter, UdpReceiver};
use nono_tests::proxylab::{read_jsonl, ProxyLab, Sandbox, SERVER};
use nono_tests::sys::CmdOutput;

const METADATA: &str = "169.254.169.254";

/// How the sandbox is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `--enforcer bpf --no-daemon` as root.
    Bpf,
    /// `--enforcer bpf` through a private daemon.
    Daemon,
    /// `--enforcer seccomp` as root.
    Seccomp,
}

/// The lab plus what the workload talks to besides the lab's servers.
struct Rig {
    lab: ProxyLab,
    /// Loopback server in the client namespace (the sandbox's loopback).
    loopback: TcpCounter,
    /// Direct TCP receiver on the test host.
    direct: TcpCounter,
    /// UDP receiver on the test host.
    udp: UdpReceiver,
    /// TCP receiver on the metadata address (server namespace).
    metadata: TcpCounter,
    /// A directory outside the `default` profile's write rules.
    outside: OutsideDir,
    daemon: Option<Daemon>,
}

/// `/var/tmp/nono-audit-<pid>-<n>`: not writable under `--profile default`
/// (which allows $CWD, $TMPDIR, /tmp, /dev/shm); removed on drop.
struct OutsideDir(PathBuf);

impl OutsideDir {
    fn new(tag: &str) -> OutsideDir {
        let p = PathBuf::from(format!("/var/tmp/nono-audit-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create the outside directory");
        OutsideDir(p)
    }
}

impl Drop for OutsideDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ip(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Rig {
    fn new(mode: Mode, tag: &str) -> Rig {
        let lab = ProxyLab::new();
        // Cloud metadata on the test host, routed into the client
        // namespace (both go with the namespaces).
        ip(
            &lab.fx.server,
            &["addr", "add", "169.254.169.254/32", "dev", "lo"],
        );
        ip(
            &lab.fx.client,
            &["route", "add", "169.254.169.254/32", "via", SERVER],
        );
        let port = |lab: &ProxyLab| lab.fx.port();
        let lport = port(&lab);
        let dport = port(&lab);
        let uport = port(&lab);
        let mport = port(&lab);
        let loopback = TcpCounter::bind(
            &lab.fx.client,
            SocketAddr::from(([127, 0, 0, 1], lport)),
            false,
        );
        let direct = TcpCounter::bind(&lab.fx.server, sa(SERVER, dport), false);
        let udp = UdpReceiver::bind(&lab.fx.server, sa(SERVER, uport));
        let metadata = TcpCounter::bind(&lab.fx.server, sa(METADATA, mport), false);
        let daemon = (mode == Mode::Daemon).then(Daemon::start);
        Rig {
            lab,
            loopback,
            direct,
            udp,
            metadata,
            outside: OutsideDir::new(tag),
            daemon,
        }
    }

    fn enforcer_args(&self, mode: Mode) -> Vec<String> {
        match mode {
            Mode::Bpf => vec!["--enforcer".into(), "bpf".into(), "--no-daemon".into()],
            Mode::Seccomp => vec!["--enforcer".into(), "seccomp".into(), "--no-daemon".into()],
            Mode::Daemon => vec![
                "--enforcer".into(),
                "bpf".into(),
                "--daemon-socket".into(),
                self.daemon
                    .as_ref()
                    .expect("daemon")
                    .socket
                    .display()
                    .to_string(),
            ],
        }
    }

    /// The workload: every step prints `STEP result`. Python is the
    /// system's (`/usr/bin/python3`, which the base covers): a version
    /// manager's shims elsewhere would put its own files in the profile.
    fn script(&self, tag: &str, with_metadata: bool, with_fourth: bool) -> String {
        let l = self.loopback.addr.port();
        let d = self.direct.addr.port();
        let u = self.udp_port();
        let m = self.metadata.addr.port();
        let outside = self.outside.0.display();
        let mut s = format!(
            r#"
get() {{ printf '%s %s\n' "$1" "$(curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' "$2" 2>/dev/null)"; }}
py() {{ /usr/bin/python3 -c "$2" >/dev/null 2>&1 && echo "$1 ok" || echo "$1 refused"; }}
get one http://one.audit.test/audit/{tag}/one
get two http://two.audit.test/audit/{tag}/two
get three http://three.elsewhere.test:8080/audit/{tag}/three
get literal http://{SERVER}:8080/audit/{tag}/literal
py loopback "import socket; s=socket.create_connection(('127.0.0.1',{l}),timeout=5); s.sendall(b'loopback-{tag}'); s.close()"
py udp "import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b'udp-{tag}',('{SERVER}',{u}))"
py direct "import socket; s=socket.create_connection(('{SERVER}',{d}),timeout=5); s.sendall(b'direct-{tag}'); s.close()"
echo written 2>/dev/null > {outside}/out-{tag} && echo "write ok" || echo "write refused"
"#
        );
        if with_metadata {
            s.push_str(&format!(
                "get metadata-proxy http://{METADATA}/audit/{tag}/metadata\n\
                 py metadata-direct \"import socket; s=socket.create_connection(('{METADATA}',{m}),timeout=5); s.sendall(b'meta-{tag}'); s.close()\"\n"
            ));
        }
        if with_fourth {
            s.push_str(&format!(
                "get fourth http://four.elsewhere.test/audit/{tag}/fourth\n"
            ));
        }
        s
    }

    fn udp_port(&self) -> u16 {
        self.udp_addr().port()
    }

    fn udp_addr(&self) -> SocketAddr {
        self.udp.addr
    }

    /// Runs the workload in a sandbox with `opts` (subcommand, profile,
    /// flags); returns `{step: result}` and the agent's output.
    fn run(
        &self,
        sb: &Sandbox,
        script: &str,
    ) -> (std::collections::BTreeMap<String, String>, CmdOutput) {
        let dir = self.lab.scratch("workload");
        let f = dir.join("workload.sh");
        fs::write(&f, script).expect("write workload");
        let f = f.display().to_string();
        let out = self.lab.exec(sb, &["sh", &f]);
        let results = out
            .stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (results, out)
    }
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// The pins of the workload's names (all on the test host).
fn pins() -> Vec<String> {
    [
        "one.audit.test",
        "two.audit.test",
        "three.elsewhere.test",
        "four.elsewhere.test",
    ]
    .iter()
    .map(|n| format!("{n}={SERVER}"))
    .collect()
}

/// A base profile narrowing loopback to one port the workload never uses
/// (so the loopback server's port is something to audit and learn).
fn write_base(dir: &Path) -> PathBuf {
    let p = dir.join("base.toml");
    fs::write(&p, "extends = \"default\"\n[network]\nloopback = [1]\n").unwrap();
    p
}

fn sandbox(rig: &Rig, mode: Mode, extra: &[&str], events: Option<&Path>) -> Sandbox {
    let mut x = rig.enforcer_args(mode);
    x.extend(extra.iter().map(|s| s.to_string()));
    Sandbox {
        resolve: pins(),
        default_pins: false,
        events: events.map(Path::to_path_buf),
        extra: x,
        ..Default::default()
    }
}

fn assert_reached(rig: &Rig, tag: &str, what: &str, out: &CmdOutput) {
    for step in ["one", "two", "three", "literal"] {
        assert_eq!(
            rig.lab
                .requests_matching(&format!("/audit/{tag}/{step}"))
                .len(),
            1,
            "{what}: the test server did not get the {step} request\n{}",
            out.describe()
        );
    }
    let got = String::from_utf8_lossy(&rig.loopback.received()).into_owned();
    assert!(
        got.contains(&format!("loopback-{tag}")),
        "{what}: the loopback server got {got:?}\n{}",
        out.describe()
    );
    let got = String::from_utf8_lossy(&rig.direct.received()).into_owned();
    assert!(
        got.contains(&format!("direct-{tag}")),
        "{what}: the direct receiver got {got:?}\n{}",
        out.describe()
    );
    assert!(
        rig.udp
            .datagrams()
            .iter()
            .any(|d| d.payload == format!("udp-{tag}").as_bytes()),
        "{what}: the datagram did not arrive\n{}",
        out.describe()
    );
}

/// Metadata is reachable outside the sandbox (so "nothing arrived" inside
/// means refused): through the server at port 80 and directly.
fn prove_metadata_reachable(rig: &Rig, tag: &str) {
    let out = rig.lab.fx.run_in_client(&[
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        &format!("http://{METADATA}/audit/{tag}/outside"),
    ]);
    assert!(out.status.success(), "metadata outside: {}", out.describe());
    assert_eq!(
        rig.lab
            .requests_matching(&format!("/audit/{tag}/outside"))
            .len(),
        1,
        "the metadata host is not reachable outside the sandbox"
    );
    let port = rig.metadata.addr.port();
    let out = rig.lab.fx.run_in_client(&[
        "python3",
        "-c",
        &format!(
            "import socket; socket.create_connection(('{METADATA}',{port}),timeout=5).close()"
        ),
    ]);
    assert!(
        out.status.success(),
        "metadata direct outside: {}",
        out.describe()
    );
    rig.lab.oracle.settle();
    assert_eq!(rig.metadata.count(), 1, "metadata direct outside not seen");
}

fn audit_workload(mode: Mode) {
    let tag = format!("{mode:?}").to_lowercase();
    let rig = Rig::new(mode, &tag);
    prove_metadata_reachable(&rig, &tag);
    let dir = rig.lab.scratch("audit");
    let base = write_base(&dir);
    let events = dir.join("events.jsonl");
    let sb = sandbox(
        &rig,
        mode,
        &["--audit", "--profile", &base.display().to_string()],
        Some(&events),
    );
    let (r, out) = rig.run(&sb, &rig.script(&tag, true, false));
    let what = format!("{mode:?} audit");
    for (step, want) in [
        ("one", "200"),
        ("two", "200"),
        ("three", "200"),
        ("literal", "200"),
        ("loopback", "ok"),
        ("udp", "ok"),
        ("direct", "ok"),
        ("write", "ok"),
        ("metadata-proxy", "403"),
        ("metadata-direct", "refused"),
    ] {
        assert_eq!(
            r.get(step).map(String::as_str),
            Some(want),
            "{what}: step {step}: {r:?}\n{}",
            out.describe()
        );
    }
    rig.lab.oracle.settle();
    assert_reached(&rig, &tag, &what, &out);
    assert!(
        rig.outside.0.join(format!("out-{tag}")).exists(),
        "{what}: the write outside the profile did not happen"
    );
    // Metadata: nothing more than the one connection made outside.
    assert_eq!(
        rig.lab
            .requests_matching(&format!("/audit/{tag}/metadata"))
            .len(),
        0,
        "{what}: metadata reached through the proxy in audit mode"
    );
    assert_eq!(
        rig.metadata.count(),
        1,
        "{what}: metadata reached directly in audit mode"
    );

    let evs = read_jsonl(&events);
    let would: Vec<&Value> = evs
        .iter()
        .filter(|e| e["verdict"] == "would-deny")
        .collect();
    let find = |pred: &dyn Fn(&Value) -> bool, name: &str| {
        assert!(
            would.iter().any(|e| pred(e)),
            "{what}: no would-deny event for {name} in {evs:#?}"
        );
    };
    for host in [
        "one.audit.test",
        "two.audit.test",
        "three.elsewhere.test",
        SERVER,
    ] {
        find(&|e| e["source"] == "proxy" && e["host"] == host, host);
    }
    let source = if mode == Mode::Seccomp {
        "seccomp"
    } else {
        "bpf"
    };
    find(
        &|e| {
            e["source"] == source
                && e["addr"] == "127.0.0.1"
                && e["port"] == rig.loopback.addr.port()
                && e["reason"] == "loopback-port-not-allowed"
        },
        "the loopback port",
    );
    find(
        &|e| e["source"] == source && e["addr"] == SERVER && e["port"] == rig.udp_port(),
        "the UDP send",
    );
    find(
        &|e| e["source"] == source && e["addr"] == SERVER && e["port"] == rig.direct.addr.port(),
        "the direct connection",
    );
    let written = rig.outside.0.join(format!("out-{tag}"));
    find(
        &|e| {
            e["source"] == "filesystem"
                && e["hook"] == "write"
                && e["path"] == written.display().to_string()
        },
        "the write outside the profile",
    );
    // The literal's would-deny names no rule (none would have refused it by
    // name), and the proxy's refusal of metadata stays a denial.
    assert!(
        evs.iter()
            .any(|e| e["source"] == "proxy" && e["verdict"] == "deny" && e["host"] == METADATA),
        "{what}: no proxy denial for metadata: {evs:#?}"
    );
    assert!(
        evs.iter()
            .any(|e| e["source"] == source && e["verdict"] == "deny" && e["addr"] == METADATA),
        "{what}: no kernel denial for metadata: {evs:#?}"
    );
    assert!(
        !would
            .iter()
            .any(|e| e["addr"] == METADATA || e["host"] == METADATA),
        "{what}: metadata recorded as would-deny: {evs:#?}"
    );
    let n = would.len();
    assert!(
        out.stderr
            .contains(&format!("audit: {n} would have been denied")),
        "{what}: summary does not count {n} would-deny events\n{}",
        out.describe()
    );
}

#[test]
fn audit_lets_through_and_records_bpf() {
    audit_workload(Mode::Bpf);
}

#[test]
fn audit_lets_through_and_records_daemon() {
    audit_workload(Mode::Daemon);
}

#[test]
fn audit_lets_through_and_records_seccomp() {
    audit_workload(Mode::Seccomp);
}

/// `learn` under `mode`, writing `out`; returns the agent's output.
fn learn(rig: &Rig, mode: Mode, base: &Path, out: &Path, script: &str) -> CmdOutput {
    let mut sb = sandbox(rig, mode, &["--profile", &base.display().to_string()], None);
    sb.subcommand = vec!["learn".into(), "-o".into(), out.display().to_string()];
    rig.run(&sb, script).1
}

fn learn_then_enforce(mode: Mode) {
    let tag = format!("learn-{mode:?}").to_lowercase();
    let rig = Rig::new(mode, &tag);
    let dir = rig.lab.scratch("learn");
    let base = write_base(&dir);
    let learned = dir.join("learned.toml");
    // The workload without metadata.
    let script = rig.script(&tag, false, false);
    let out = learn(&rig, mode, &base, &learned, &script);
    assert!(out.status.success(), "learn failed\n{}", out.describe());
    let text = fs::read_to_string(&learned).expect("learned profile written");
    // The file passes `profile validate`.
    let v = Command::new(&rig.lab.agent)
        .args(["profile", "validate"])
        .arg(&learned)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "profile validate: {}\n{text}",
        String::from_utf8_lossy(&v.stderr)
    );
    for want in [
        "\"*.audit.test\",  # seen 2 times: one.audit.test, two.audit.test",
        "\"three.elsewhere.test:8080\",  # seen once",
        &format!("\"{SERVER}/32:8080\",  # seen once"),
        &format!("{},  # seen once", rig.loopback.addr.port()),
        "1,  # from the base profile",
        &format!("#   udp to {SERVER}:{} (seen once)", rig.udp_port()),
        &format!(
            "write = [\n    \"{}\",  # opened by 1 process\n]",
            rig.outside.0.display()
        ),
    ] {
        assert!(
            text.contains(want),
            "learned profile lacks {want:?}:\n{text}"
        );
    }
    assert!(!text.contains(METADATA), "{text}");

    // Learning twice writes the same file; without --force the first is
    // kept.
    let refused = learn(&rig, mode, &base, &learned, &script);
    assert_eq!(refused.code(), 125, "{}", refused.describe());
    assert!(refused.stderr.contains("--force"), "{}", refused.describe());
    let again = dir.join("again.toml");
    let first_out = out;
    let out = learn(&rig, mode, &base, &again, &script);
    assert!(out.status.success(), "{}", out.describe());
    let second = fs::read_to_string(&again).unwrap();
    let first_lines: Vec<&str> = text.lines().collect();
    let second_lines: Vec<&str> = second.lines().collect();
    let only_first: Vec<&&str> = first_lines
        .iter()
        .filter(|l| !second_lines.contains(l))
        .collect();
    let only_second: Vec<&&str> = second_lines
        .iter()
        .filter(|l| !first_lines.contains(l))
        .collect();
    assert!(
        second == text,
        "learning twice gave different files: only in the first {only_first:#?}, only in the \
         second {only_second:#?}\nfirst run: {}\nsecond run: {}",
        first_out.describe(),
        out.describe()
    );

    // Enforcing under the learned profile: the workload (only what goes
    // through the proxy and loopback: direct destinations cannot be in a
    // profile) runs clean, a fourth host is refused.
    let enforce_script: String = rig
        .script(&tag, false, true)
        .lines()
        .filter(|l| !l.starts_with("py udp") && !l.starts_with("py direct"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            &format!("/audit/{tag}/"),
            &format!("/audit/{tag}-enforced/"),
        );
    // The learn run's file goes, so that the enforced run's write shows.
    let written = rig.outside.0.join(format!("out-{tag}"));
    fs::remove_file(&written).expect("the learn run wrote its file");
    let events = dir.join("enforced.jsonl");
    let sb = sandbox(
        &rig,
        mode,
        &["--profile", &learned.display().to_string()],
        Some(&events),
    );
    let (r, out) = rig.run(&sb, &enforce_script);
    for (step, want) in [
        ("one", "200"),
        ("two", "200"),
        ("three", "200"),
        ("literal", "200"),
        ("loopback", "ok"),
        ("write", "ok"),
        ("fourth", "403"),
    ] {
        assert_eq!(
            r.get(step).map(String::as_str),
            Some(want),
            "enforced {step}: {r:?}\n{}",
            out.describe()
        );
    }
    let tag2 = format!("{tag}-enforced");
    for step in ["one", "two", "three", "literal"] {
        assert_eq!(
            rig.lab
                .requests_matching(&format!("/audit/{tag2}/{step}"))
                .len(),
            1,
            "enforced: {step} did not arrive\n{}",
            out.describe()
        );
    }
    assert_eq!(
        rig.lab
            .requests_matching(&format!("/audit/{tag2}/fourth"))
            .len(),
        0,
        "enforced: the fourth host was reached"
    );
    assert!(
        written.exists(),
        "enforced: the learned write did not happen"
    );
    // Without the learned profile the same write is refused (the base does
    // not allow it): the learned rule is what lets it through.
    let sb = sandbox(
        &rig,
        mode,
        &["--profile", &base.display().to_string()],
        None,
    );
    let (r, out) = rig.run(
        &sb,
        &format!(
            "echo x 2>/dev/null > {}/refused && echo \"write ok\" || echo \"write refused\"\n",
            rig.outside.0.display()
        ),
    );
    assert_eq!(
        r.get("write").map(String::as_str),
        Some("refused"),
        "{}",
        out.describe()
    );
    assert!(!rig.outside.0.join("refused").exists());
    // The only denial is the fourth host.
    let denials: Vec<Value> = read_jsonl(&events)
        .into_iter()
        .filter(|e| e["verdict"] == "deny")
        .collect();
    assert!(
        denials.len() == 1 && denials[0]["host"] == "four.elsewhere.test",
        "enforced run: unexpected denials {denials:#?}"
    );
}

#[test]
fn learn_then_enforce_bpf() {
    learn_then_enforce(Mode::Bpf);
}

#[test]
fn learn_then_enforce_daemon() {
    learn_then_enforce(Mode::Daemon);
}

#[test]
fn learn_then_enforce_seccomp() {
    learn_then_enforce(Mode::Seccomp);
}

/// The child makes up names: Host headers and CONNECT targets with quotes,
/// newlines, TOML syntax, brackets. None of it reaches the profile except
/// as a valid host name; the file still validates.
#[test]
fn hostile_names_do_not_corrupt_the_profile() {
    let rig = Rig::new(Mode::Bpf, "hostile");
    let dir = rig.lab.scratch("hostile");
    let base = write_base(&dir);
    let learned = dir.join("learned.toml");
    let script = r#"
/usr/bin/python3 - <<'PY'
import os, socket
proxy = os.environ["HTTP_PROXY"]
auth = proxy.split("//")[1].split("@")[0]
import base64
cred = base64.b64encode(auth.encode()).decode()
port = int(proxy.rsplit(":", 1)[1].strip("/"))
targets = [
    'evil.test"]\n[network]\nallow_cidrs = ["0.0.0.0/0"]\n#',
    'x.test\r\nallow_domains = ["*"]',
    "a'b.test", "[fe80::1]", "169.254.169.254", "ok.hostile.test",
    "*.com", "a b.test", "%0aevil.test",
]
for t in targets:
    for req in (f"CONNECT {t}:443 HTTP/1.1\r\nHost: {t}:443\r\n",
                f"GET http://{t}/ HTTP/1.1\r\nHost: {t}\r\n"):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall((req + f"Proxy-Authorization: Basic {cred}\r\n\r\n").encode("utf-8", "surrogateescape"))
            s.recv(4096)
            s.close()
        except OSError:
            pass
print("done ok")
PY
"#;
    let mut sb = sandbox(
        &rig,
        Mode::Bpf,
        &["--profile", &base.display().to_string()],
        None,
    );
    sb.resolve.push(format!("ok.hostile.test={SERVER}"));
    sb.subcommand = vec!["learn".into(), "-o".into(), learned.display().to_string()];
    let (r, out) = rig.run(&sb, script);
    assert_eq!(
        r.get("done").map(String::as_str),
        Some("ok"),
        "{}",
        out.describe()
    );
    assert!(out.status.success(), "{}", out.describe());
    let text = fs::read_to_string(&learned).expect("learned profile");
    let v: toml::Value = toml::from_str(&text).expect("the profile is TOML");
    let net = v["network"].as_table().unwrap();
    let domains: Vec<&str> = net
        .get("allow_domains")
        .and_then(|d| d.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(domains, ["ok.hostile.test"], "{text}");
    assert!(!net.contains_key("allow_cidrs"), "{text}");
    assert!(
        !text.contains("0.0.0.0/0")
            || text
                .lines()
                .all(|l| !l.trim_start().starts_with("\"0.0.0.0")),
        "{text}"
    );
    let check = Command::new(&rig.lab.agent)
        .args(["profile", "validate"])
        .arg(&learned)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// In audit mode the command can write what the user can, the base profile
/// too when it is a file it can reach: `learn` then writes nothing rather
/// than a profile that extends a base the command chose.
#[test]
fn learn_refuses_a_base_the_command_rewrote() {
    let rig = Rig::new(Mode::Bpf, "rewrite");
    let dir = rig.lab.scratch("rewrite");
    let base = write_base(&dir);
    let learned = dir.join("learned.toml");
    let script = format!(
        "printf 'extends = \"default\"\\n[network]\\nallow_domains = [\"*.evil.test\"]\\n' > {} \
         && echo \"rewrote ok\"\n",
        base.display()
    );
    let mut sb = sandbox(
        &rig,
        Mode::Bpf,
        &["--profile", &base.display().to_string()],
        None,
    );
    sb.subcommand = vec!["learn".into(), "-o".into(), learned.display().to_string()];
    let (r, out) = rig.run(&sb, &script);
    assert_eq!(
        r.get("rewrote").map(String::as_str),
        Some("ok"),
        "{}",
        out.describe()
    );
    assert_eq!(out.code(), 125, "{}", out.describe());
    assert!(out.stderr.contains("changed"), "{}", out.describe());
    assert!(
        !learned.exists(),
        "a profile was written over a rewritten base"
    );
}

/// Unprivileged there is no fanotify: the profile says filesystem learning
/// was not available (and learns the network part as ever).
#[test]
fn unprivileged_learn_says_filesystem_learning_was_not_available() {
    use nono_tests::runner::RunAs;
    use nono_tests::sys::{self, TempDir};
    sys::require_prereqs();
    let user = RunAs::fresh();
    let tmp = TempDir::new("learn-user");
    tmp.chown(user.uid, user.gid);
    let out_file = tmp.path("learned.toml");
    let mut cmd = Command::new("setpriv");
    cmd.args(user.setpriv_args())
        .arg(sys::agent_bin())
        .args(["learn", "--enforcer", "seccomp", "--no-daemon", "-o"])
        .arg(&out_file)
        .args(["--", "true"])
        .current_dir(&tmp.0)
        .env("HOME", &tmp.0)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("NONO_AGENT_DAEMON_SOCKET");
    let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    let text = fs::read_to_string(&out_file).expect("learned profile");
    assert!(
        text.contains("# Filesystem learning was not available: it needs root"),
        "{text}"
    );
    assert!(text.contains("extends = \"default\""), "{text}");
}

/// A host configuration with deny rules rules audit out: audit mode would
/// let the command connect directly, around the proxy that enforces them.
/// Nothing runs (the marker file is not created) and `learn` writes nothing.
#[test]
fn host_denials_refuse_audit_and_learn() {
    use nono_tests::sys::{self, TempDir};
    use std::os::unix::fs::PermissionsExt as _;
    sys::require_prereqs();
    let tmp = TempDir::new("audit-hostcfg");
    let etc = tmp.path("etc");
    fs::create_dir_all(&etc).unwrap();
    fs::set_permissions(&etc, fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = etc.join("config.toml");
    fs::write(&cfg, "[network]\ndeny_cidrs = [\"198.51.100.0/24\"]\n").unwrap();
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    let marker = tmp.path("ran");
    let learned = tmp.path("learned.toml");
    for sub in [
        vec!["exec".to_string(), "--audit".into()],
        vec![
            "learn".to_string(),
            "-o".into(),
            learned.display().to_string(),
        ],
    ] {
        let mut cmd = Command::new(sys::agent_bin());
        cmd.args(&sub)
            .args(["--no-daemon", "--", "touch"])
            .arg(&marker)
            .env("NONO_AGENT_CONFIG", &cfg);
        let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        assert_eq!(out.code(), 125, "{sub:?}: {}", out.describe());
        assert!(out.stderr.contains("deny_cidrs"), "{}", out.describe());
        assert!(!marker.exists(), "{sub:?}: the command ran");
    }
    assert!(!learned.exists());
}

/// `exec --audit` as an unprivileged user, under the seccomp supervisor and
/// through the daemon: a TCP connection straight to the test host (which
/// the oracle in the server namespace counts) goes through and is recorded
/// as would-deny; the same connection without `--audit` is refused and
/// never arrives.
fn audit_unprivileged(e: nono_tests::runner::Enforcement) {
    use nono_tests::netns::SERVER_V4;
    use nono_tests::runner::{Harness, ProbeResult};
    use nono_tests::sys::TempDir;
    let h = Harness::new(env!("CARGO_BIN_EXE_nono-probe"));
    let tmp = TempDir::new("audit-user");
    let mut opts = h.opts(e);
    if let Some(u) = opts.user {
        tmp.chown(u.uid, u.gid);
        opts.env.push(("HOME".into(), tmp.0.display().to_string()));
    }
    let probe = h.probe_for(&opts).display().to_string();
    let run = |opts: &nono_tests::runner::ExecOpts, port: u16| {
        h.oracle.listen_tcp(port);
        let out = h.agent_exec(
            opts,
            &[
                &probe,
                "tcp4",
                "--target",
                &SERVER_V4.to_string(),
                "--port",
                &port.to_string(),
            ],
        );
        h.oracle.settle();
        (ProbeResult::parse(&out.stdout), out)
    };
    // Enforcing first: refused, nothing arrives (the connection is a real
    // one: audit below shows it reaching the oracle).
    let port = h.fx.port();
    let (r, out) = run(&opts, port);
    assert!(
        r.as_ref().is_some_and(ProbeResult::denied),
        "{r:?}\n{}",
        out.describe()
    );
    assert_eq!(h.oracle.tcp_connections(port), 0);

    let events = tmp.path("events.jsonl");
    let mut audit = opts.clone();
    audit.extra.push("--audit".into());
    audit.events = Some(events.clone());
    let port = h.fx.port();
    let (r, out) = run(&audit, port);
    assert!(
        r.as_ref().is_some_and(|r| r.ok),
        "{e:?}: {r:?}\n{}",
        out.describe()
    );
    assert_eq!(h.oracle.tcp_connections(port), 1, "{}", out.describe());
    let evs = read_jsonl(&events);
    assert!(
        evs.iter().any(|ev| ev["verdict"] == "would-deny"
            && ev["addr"] == SERVER_V4.to_string()
            && ev["port"] == port),
        "{e:?}: no would-deny event in {evs:#?}"
    );
    assert!(
        out.stderr.contains("would have been denied"),
        "{}",
        out.describe()
    );
}

#[test]
fn audit_unprivileged_seccomp() {
    audit_unprivileged(nono_tests::runner::Enforcement::SeccompUser);
}

#[test]
fn audit_unprivileged_daemon() {
    audit_unprivileged(nono_tests::runner::Enforcement::DaemonUser);
}

/// A command that cannot be started leaves no profile (and `learn` exits
/// like `exec`: 127).
#[test]
fn learn_of_a_missing_command_writes_nothing() {
    use nono_tests::sys::{self, TempDir};
    sys::require_prereqs();
    let tmp = TempDir::new("learn-missing");
    let out_file = tmp.path("learned.toml");
    let mut cmd = Command::new(sys::agent_bin());
    cmd.args(["learn", "--no-daemon", "-o"])
        .arg(&out_file)
        .args(["--", "/nonexistent/nono-learn-test"]);
    let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
    assert_eq!(out.code(), 127, "{}", out.describe());
    assert!(!out_file.exists());
}
