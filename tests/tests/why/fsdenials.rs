//! Filesystem denials in the summary, events and notices, read from the
//! kernel's Landlock audit records: the test turns the audit subsystem on
//! for its duration (and back to what it was), runs a sandbox in the
//! initial network namespace (no network traffic), and checks each denied
//! access is listed, with a hostile file name escaped on the terminal side.

use std::process::Command;

use nono_tests::sys::{self, TempDir};

use super::write_profile;

const NETLINK_AUDIT: libc::c_int = 9;
const AUDIT_GET: u16 = 1000;
const AUDIT_SET: u16 = 1001;

/// One request on an audit netlink socket; the reply's first message
/// payload (or the error).
fn audit_request(ty: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    // SAFETY: socket creation, checked below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_AUDIT) };
    assert!(fd >= 0, "audit socket: {}", std::io::Error::last_os_error());
    let len = 16 + payload.len();
    let mut msg = Vec::new();
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(payload);
    // SAFETY: valid buffer; the kernel is the default destination.
    let r = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) };
    assert!(r >= 0, "audit send: {}", std::io::Error::last_os_error());
    let mut buf = vec![0u8; 8192];
    // SAFETY: valid buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    assert!(n >= 16, "audit recv: {}", std::io::Error::last_os_error());
    buf.truncate(n as usize);
    buf[16..].to_vec()
}

fn audit_enabled() -> u32 {
    let p = audit_request(AUDIT_GET, 0, &[]);
    u32::from_ne_bytes([p[4], p[5], p[6], p[7]])
}

/// struct audit_status: mask, enabled, failure, pid, rate_limit, ...
const AUDIT_STATUS_ENABLED: u32 = 1;
const AUDIT_STATUS_RATE_LIMIT: u32 = 8;

fn audit_rate_limit() -> u32 {
    let p = audit_request(AUDIT_GET, 0, &[]);
    u32::from_ne_bytes([p[16], p[17], p[18], p[19]])
}

/// Sets one field (index `at` of struct audit_status) under `mask`.
fn audit_set(mask: u32, at: usize, v: u32) {
    let mut st = [0u32; 10];
    st[0] = mask;
    st[at] = v;
    let bytes: Vec<u8> = st.iter().flat_map(|x| x.to_ne_bytes()).collect();
    let ack = audit_request(AUDIT_SET, libc::NLM_F_ACK as u16, &bytes);
    let err = i32::from_ne_bytes([ack[0], ack[1], ack[2], ack[3]]);
    assert_eq!(err, 0, "AUDIT_SET mask {mask} = {v}: errno {}", -err);
}

fn set_audit_enabled(v: u32) {
    audit_set(AUDIT_STATUS_ENABLED, 1, v);
}

/// The tests of this file change the host's audit settings: one at a time.
static AUDIT_SETTINGS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Audit on while it lives; the previous setting restored on drop.
struct AuditOn(u32, #[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

impl AuditOn {
    fn new() -> Self {
        let guard = AUDIT_SETTINGS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = audit_enabled();
        assert_ne!(
            before, 2,
            "the audit configuration is locked: cannot run this test"
        );
        set_audit_enabled(1);
        AuditOn(before, guard)
    }
}

impl Drop for AuditOn {
    fn drop(&mut self) {
        set_audit_enabled(self.0);
    }
}

/// A rate limit on audit records while it lives (restored on drop).
struct RateLimit(u32);

impl RateLimit {
    fn new(per_second: u32) -> Self {
        let before = audit_rate_limit();
        audit_set(AUDIT_STATUS_RATE_LIMIT, 4, per_second);
        RateLimit(before)
    }
}

impl Drop for RateLimit {
    fn drop(&mut self) {
        audit_set(AUDIT_STATUS_RATE_LIMIT, 4, self.0);
    }
}

#[test]
fn records_the_kernel_drops_make_the_count_incomplete() {
    // A hostile command hides its filesystem denials by making the kernel
    // drop audit records (a flood past the rate limit or the backlog):
    // the kernel counts them as lost, which the summary must say, rather
    // than give a short count as complete.
    sys::require_prereqs();
    let tmp = TempDir::new("fsdeny-lost");
    let secret = tmp.path("secret");
    std::fs::write(&secret, b"secret").unwrap();
    const TRIES: usize = 300;
    // Each redirection is an open by the shell itself: one denial each.
    // The pause lets the rate limit's second pass, so the agent's own
    // closing record gets through. The flood waits for the test to set the
    // rate limit, which it does once the command runs: the agent's start-up
    // check that audit records reach it (one record of its own) must not
    // meet a limit that the previous test's records may have used up in
    // the same second (it then rightly says denials are not reported).
    let go = std::path::PathBuf::from(format!("/dev/shm/nono-fsdeny-go-{}", std::process::id()));
    let _ = std::fs::remove_file(&go);
    let script = format!(
        "echo ready; while [ ! -e \"$GO\" ]; do sleep 0.05; done; \
         i=0; while [ $i -lt {TRIES} ]; do read -r x < \"$S\"; i=$((i+1)); done 2>/dev/null; sleep 2; echo done"
    );
    // Outside, every read works.
    let out = Command::new("sh")
        .args(["-c", "cat \"$S\" > /dev/null && echo readable"])
        .env("S", &secret)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("readable"));
    let pdir = TempDir::new("fsdeny-lost-profile");
    let profile = pdir.path("p.toml");
    write_profile(
        &profile,
        "[filesystem]\nread = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", \"/etc\", \"/dev\", \"/proc\"]\n\
         write = [\"/dev/null\"]\nexec = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\"]\n",
    );
    let out = {
        let _audit = AuditOn::new();
        let mut c = Command::new(sys::agent_bin());
        c.args(["exec", "--no-daemon", "--notices", "never", "--profile"])
            .arg(&profile)
            .env("S", &secret)
            .env("GO", &go)
            .args(["--", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("spawn the agent");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        let _ = std::io::BufRead::read_line(&mut stdout, &mut first);
        let _rate = RateLimit::new(20);
        std::fs::write(&go, b"").unwrap();
        let status = sys::wait_child(&mut child, sys::CMD_TIMEOUT, "the flooding sandbox");
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        let mut stderr = String::new();
        let _ =
            std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr);
        let _ = std::fs::remove_file(&go);
        sys::CmdOutput {
            status,
            stdout: first + &rest,
            stderr,
            pipes_held_open: false,
        }
    };
    assert!(out.stdout.contains("done"), "{}", out.describe());
    let counted: usize = out
        .stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("nono-agent: sandbox ")?
                .split(": ")
                .nth(1)?
                .strip_suffix(')')?
                .split_once(" denied (landlock: ")
                .map(|(n, _)| n.parse().unwrap())
        })
        .unwrap_or(0);
    // The kernel did drop some (else this test shows nothing).
    assert!(counted < TRIES, "nothing was dropped: {}", out.describe());
    assert!(
        out.stderr
            .contains("some filesystem denials may be missing from the count"),
        "a short count given as complete:\n{}",
        out.describe()
    );
}

#[test]
fn fs_denials_are_listed_where_the_kernel_reports_them() {
    sys::require_prereqs();
    let tmp = TempDir::new("fsdeny");
    let ro = tmp.path("ro");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("f"), b"ro").unwrap();
    let secret = tmp.path("secret");
    std::fs::write(&secret, b"secret").unwrap();
    let hostile = tmp.path("ev\x1b]0;pwned\x07il");
    std::fs::write(&hostile, b"x").unwrap();
    // Paths through the environment: the hostile name needs no quoting.
    let script = r#"cat "$S" "$S" "$H" > /dev/null 2>&1; echo x 2>/dev/null >> "$F"; echo done"#;
    let env = [
        ("S", secret.clone()),
        ("H", hostile.clone()),
        ("F", ro.join("f")),
    ];
    // Everything works outside.
    let out = Command::new("sh")
        .args(["-c", &script.replace(" > /dev/null 2>&1", "")])
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(out.status.success(), "fails outside: {out:?}");
    std::fs::write(ro.join("f"), b"ro").unwrap();
    let pdir = TempDir::new("fsdeny-profile");
    let profile = pdir.path("p.toml");
    write_profile(
        &profile,
        &format!(
            "[filesystem]\nread = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", \"/etc\", \"/dev\", \"/proc\", \"{}\"]\n\
             write = [\"/dev/null\"]\nexec = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\"]\n",
            ro.display()
        ),
    );
    let events = tmp.path("events.jsonl");
    let run = || {
        let mut c = Command::new(sys::agent_bin());
        c.args(["exec", "--no-daemon", "--notices", "always", "--profile"])
            .arg(&profile)
            .arg("--events")
            .arg(&events)
            .envs(env.iter().cloned())
            .args(["--", "sh", "-c", script]);
        sys::run_timeout(&mut c, sys::CMD_TIMEOUT)
    };
    let out = {
        let _audit = AuditOn::new();
        run()
    };
    assert!(out.stdout.contains("done"), "{}", out.describe());
    let sandbox = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("nono-agent: sandbox ")?.split(':').next())
        .expect("summary")
        .to_string();
    // Summary: 2 reads of the secret, the hostile file, the append.
    assert!(
        out.stderr.contains(&format!(
            "nono-agent: sandbox {sandbox}: 4 denied (landlock: 4)"
        )),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("not reported"), "{}", out.describe());
    let text = std::fs::read_to_string(&events).unwrap();
    let evs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(evs.len(), 4, "{text}");
    let paths: Vec<&str> = evs.iter().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(
        paths
            .iter()
            .filter(|p| **p == secret.to_str().unwrap())
            .count(),
        2,
        "{text}"
    );
    assert!(paths.contains(&hostile.to_str().unwrap()), "{text}");
    assert!(evs
        .iter()
        .all(|e| e["source"] == "landlock" && e["sandbox"] == sandbox.as_str()));
    assert!(
        evs.iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fs.write_file"))),
        "{text}"
    );
    // Notices: once per path and reason, the hostile name escaped.
    assert_eq!(
        out.stderr
            .matches(&format!(
                "nono-agent: denied access to {} (fs.read_file)",
                secret.display()
            ))
            .count(),
        1,
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("ev\\x1b]0;pwned\\x07il (fs.read_file)"),
        "{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains('\x1b') && !out.stderr.contains('\x07'),
        "raw control characters on stderr: {:?}",
        out.stderr
    );
}
