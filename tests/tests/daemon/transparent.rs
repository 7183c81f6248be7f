//! Transparent mode through the daemon: the records of redirected sockets
//! live in the daemon's map, and the daemon tells each sandbox's owner
//! about that sandbox's sockets only.

use std::fs;
use std::time::Duration;

use nono_agent::daemon::client::{Client, ClientError};
use nono_agent::daemon::protocol::WirePolicy;
use nono_tests::daemon::Daemon;
use nono_tests::netns::NetFixture;
use nono_tests::sys;

fn policy() -> WirePolicy {
    WirePolicy {
        loopback_any: true,
        loopback_ports: vec![],
        proxies: vec![],
        audit: false,
        redirects: [0; 4],
    }
}

fn sandbox_id(n: u64) -> String {
    format!("{:016x}", (std::process::id() as u64) << 32 | n)
}

/// A lookup needs the sandbox's token, and a lookup connection makes
/// lookups only.
#[test]
fn lookups_need_the_sandboxs_token_and_nothing_else_rides_along() {
    let d = Daemon::start();
    let mut owner = Client::connect(&d.socket).unwrap().expect("daemon answers");
    let id = sandbox_id(1);
    let created = owner.create(&id, policy()).unwrap();

    let mut c = Client::connect(&d.socket).unwrap().unwrap();
    match c.lookup(&id, "not-the-token", 1) {
        Err(ClientError::Refused(m)) => assert!(m.contains("no sandbox"), "{m}"),
        r => panic!("a wrong token must be refused: {r:?}"),
    }
    let mut c = Client::connect(&d.socket).unwrap().unwrap();
    // No record for this cookie: nothing to tell.
    assert_eq!(c.lookup(&id, &created.token, 12345).unwrap(), None);
    // The connection is a lookup connection now.
    assert!(
        c.status().is_err(),
        "a lookup connection answered a status request"
    );
    drop(owner);
    d.cleanup();
}

/// A sandbox's redirected connection is looked up by its own agent (the
/// proxy learns the destination), while another sandbox of the same user
/// asking for the same socket cookie learns nothing.
#[test]
fn a_record_is_told_to_its_own_sandbox_only() {
    let d = Daemon::start();
    let fx = NetFixture::new();
    // Removed when dropped, a failed assertion included.
    let tmp = sys::TempDir::new("dtrans");
    let cookie_file = tmp.path("cookie");
    let events = tmp.path("events.jsonl");
    // In the client netns 203.0.113.0/24 routes to the test server's
    // namespace, where nothing answers on 203.0.113.9: if the connect were
    // not redirected it would stay on the machine and fail.
    let script = format!(
        "import socket, time\n\
         s = socket.create_connection(('203.0.113.9', 443), timeout=5)\n\
         c = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), 'little')\n\
         open('{}', 'w').write(str(c))\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n')\n\
         time.sleep(3)\n",
        cookie_file.display()
    );
    let mut cmd = fx.client_command(sys::agent_bin());
    cmd.arg("exec")
        .arg("--daemon-socket")
        .arg(&d.socket)
        .arg("--transparent")
        .args(["--allow-domain", "allowed.test"])
        .args(["--resolve", "allowed.test=198.51.100.2"])
        .arg("--events")
        .arg(&events)
        .args(["--", "python3", "-c", &script]);
    let run = std::thread::spawn(move || sys::run_timeout(&mut cmd, Duration::from_secs(30)));
    let ok = sys::wait_until(Duration::from_secs(20), || cookie_file.exists());
    assert!(ok, "the sandboxed client never connected");
    std::thread::sleep(Duration::from_millis(200));
    let cookie: u64 = fs::read_to_string(&cookie_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // Another sandbox of the same user (root here) asks for that socket.
    let mut other = Client::connect(&d.socket).unwrap().unwrap();
    let id = sandbox_id(2);
    let created = other.create(&id, policy()).unwrap();
    let mut c = Client::connect(&d.socket).unwrap().unwrap();
    assert_eq!(
        c.lookup(&id, &created.token, cookie).unwrap(),
        None,
        "the daemon told another sandbox where this one's socket dialled"
    );

    let out = run.join().unwrap();
    assert!(
        out.stderr.contains("enforcer: bpf (daemon)"),
        "not the daemon's sandbox: {}",
        out.stderr
    );
    // Its own agent learned the destination: the proxy judged the
    // connection by its Host, not "no recorded destination".
    let ev = fs::read_to_string(&events).unwrap_or_default();
    let transparent: Vec<&str> = ev
        .lines()
        .filter(|l| l.contains("\"hook\":\"transparent\""))
        .collect();
    assert!(
        !transparent.is_empty(),
        "no transparent event: {ev}\n{}",
        out.stderr
    );
    assert!(
        transparent
            .iter()
            .all(|l| !l.contains("no recorded destination")),
        "the sandbox's own agent could not look its socket up: {ev}"
    );
    assert!(
        transparent.iter().any(|l| l.contains("allowed.test")),
        "the proxy did not decide by the name: {ev}"
    );
    drop(other);
    d.cleanup();
}
