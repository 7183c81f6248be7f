//! Credential injection (issue 15), judged by the receiving side: a TLS
//! test host in the fixture's server namespace ([`TlsHost`], certificate
//! from a CA made in the test, given to the agent with `--upstream-ca`)
//! records what each request carried. Names are pinned with `--resolve`
//! and the proxy's DNS server is a dead loopback port, so the machine's
//! resolver is never asked.
//!
//! Hostile-child cases: the key looked for in the sandbox's environment,
//! `/proc/*/environ` and `cmdline`, the files it can read under the temp
//! directories; the CA key looked for; the placeholder sent to another
//! host (arrives unchanged); a Host that names another host (refused, no
//! credential); a host whose certificate does not verify (refused).
//!
//! Needs root, curl and python3. Run with
//! `cargo test -p nono-tests --test credentials`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nono_tests::netns::NetFixture;
use nono_tests::sys::{self, CmdOutput, TempDir};
use nono_tests::tlshost::TlsHost;

/// The credential host and a host without credentials (both the test host).
const CRED_HOST: &str = "api.cred.test";
const PLAIN_HOST: &str = "plain.test";
/// The agent's variable holding the real key (not NONO_*: the agent never
/// passes those, which would hide a failure to remove it).
const VAR: &str = "CRED_TEST_API_KEY";

static N: AtomicU32 = AtomicU32::new(0);

struct Lab {
    host: TlsHost,
    fx: NetFixture,
    tmp: TempDir,
    agent: PathBuf,
    /// The real key of this lab (unique, so a match is never a leftover).
    key: String,
    /// Make sandboxes through this private daemon (else `--no-daemon`).
    daemon_socket: Option<PathBuf>,
}

impl Lab {
    fn new() -> Lab {
        Self::new_with(true)
    }

    /// A lab whose host speaks HTTP/2 (`h2`) or HTTP/1.1 only.
    fn new_with(h2: bool) -> Lab {
        sys::require_prereqs();
        sys::require_tool("curl", "the credential tests' HTTP client");
        let tmp = TempDir::new("creds");
        std::fs::set_permissions(&tmp.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod tmp");
        let fx = NetFixture::new();
        let host = TlsHost::start_with(&fx, &tmp.0, &[CRED_HOST, PLAIN_HOST], h2);
        let key = format!(
            "sk-nono-test-{}-{}-REALKEY",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Lab {
            host,
            fx,
            tmp,
            agent: sys::agent_bin(),
            key,
            daemon_socket: None,
        }
    }

    /// `nono-agent exec` in the client namespace with the credential, the
    /// pins and the test CA, plus `extra`, running `sh -c script`.
    fn command(&self, extra: &[&str], script: &str) -> Command {
        let mut cmd = self.fx.client_command(&self.agent);
        cmd.arg("exec");
        match &self.daemon_socket {
            Some(s) => cmd.arg("--daemon-socket").arg(s),
            None => cmd.arg("--no-daemon"),
        };
        cmd.args([
            "--events",
            &self.tmp.path("events.jsonl").display().to_string(),
        ])
        .args(["--allow-domain", CRED_HOST, "--allow-domain", PLAIN_HOST])
        .args(["--resolve", &format!("{CRED_HOST}=198.51.100.2")])
        .args(["--resolve", &format!("{PLAIN_HOST}=198.51.100.2")])
        // Nothing listens there: no name is ever sent to the machine's
        // resolver.
        .args(["--dns-server", "127.0.0.1:9"])
        .args(extra)
        .arg("--")
        .args(["sh", "-c", script])
        .env(VAR, &self.key)
        .env_remove("SSL_CERT_FILE")
        .env_remove("CURL_CA_BUNDLE");
        cmd
    }

    fn with_credential(&self) -> Vec<String> {
        vec![
            "--credential".into(),
            format!("{CRED_HOST}:x-api-key=env:{VAR}"),
            "--upstream-ca".into(),
            self.host.ca_pem.display().to_string(),
        ]
    }

    fn run(&self, extra: &[&str], script: &str) -> CmdOutput {
        let mut args: Vec<String> = self.with_credential();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sys::run_timeout(&mut self.command(&args, script), Duration::from_secs(60))
    }

    fn events(&self) -> String {
        std::fs::read_to_string(self.tmp.path("events.jsonl")).unwrap_or_default()
    }

    /// The agent's own output and events never hold the key.
    /// The request for `path` arrived at the test host (in `recs`, its
    /// records) carrying this lab's real key in its credential header.
    fn assert_key_arrived(&self, recs: &[nono_tests::tlshost::Record], path: &str) {
        let r = recs
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("the request for {path} did not arrive"));
        assert_eq!(
            r.header("x-api-key"),
            vec![self.key.as_str()],
            "{path}: the credential header"
        );
    }

    fn assert_no_key_in_agent_output(&self, out: &CmdOutput) {
        assert!(
            !out.stderr.contains(&self.key),
            "key in stderr: {}",
            out.describe()
        );
        assert!(
            !self.events().contains(&self.key),
            "key in events: {}",
            self.events()
        );
    }
}

#[test]
fn curl_sends_the_placeholder_and_the_host_sees_the_real_key_h1_and_h2() {
    let lab = Lab::new();
    let out = lab.run(
        &[],
        &format!(
            "echo \"placeholder=${VAR}\"; \
             curl -sS --http1.1 -w 'v1=%{{http_version}}\\n' -H \"x-api-key: ${VAR}\" https://{CRED_HOST}/h1 && \
             curl -sS --http2 -w 'v2=%{{http_version}}\\n' -H \"x-api-key: ${VAR}\" -H \"x-echo: k=${VAR}\" https://{CRED_HOST}/h2"
        ),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.contains("placeholder=nono-placeholder-"),
        "the sandbox's variable holds a placeholder: {}",
        out.describe()
    );
    // The sandbox spoke HTTP/1.1, then HTTP/2 to the proxy (the host
    // speaks h2, so the proxy re-originates both over h2).
    assert!(out.stdout.contains("v1=1.1"), "{}", out.describe());
    assert!(out.stdout.contains("v2=2"), "{}", out.describe());
    let recs = lab.host.records();
    let h1 = recs.iter().find(|r| r.path == "/h1").expect("/h1 arrived");
    assert_eq!(h1.header("x-api-key"), vec![lab.key.as_str()]);
    let h2 = recs.iter().find(|r| r.path == "/h2").expect("/h2 arrived");
    assert_eq!(h2.version, "HTTP/2.0", "{h2:?}");
    assert_eq!(h2.header("x-api-key"), vec![lab.key.as_str()]);
    // Only the credential's own header carries the key: a placeholder in
    // another header arrives as the placeholder (a host reflecting that
    // header would otherwise hand the key to the sandbox).
    let echo = h2.header("x-echo");
    assert_eq!(echo.len(), 1, "{h2:?}");
    assert!(
        echo[0].starts_with("k=nono-placeholder-") && !echo[0].contains(&lab.key),
        "{h2:?}"
    );
    lab.assert_no_key_in_agent_output(&out);
    // The injected requests are events: which credential, method, path,
    // status; never the value.
    let ev = lab.events();
    let inject: Vec<serde_json::Value> = ev
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["hook"] == "inject")
        .collect();
    assert_eq!(inject.len(), 2, "{ev}");
    assert_eq!(inject[0]["credential"], format!("env:{VAR}"));
    assert_eq!(inject[0]["method"], "GET");
    assert_eq!(inject[0]["path"], "/h1");
    assert_eq!(inject[0]["status"], 200);
    assert_eq!(inject[0]["verdict"], "allow");
}

#[test]
fn python_urllib_and_requests_get_the_key_put_in() {
    let lab = Lab::new();
    sys::require_tool("python3", "the Python clients");
    let py = format!(
        "import os, urllib.request\n\
         k = os.environ['{VAR}']\n\
         r = urllib.request.Request('https://{CRED_HOST}/urllib', headers={{'x-api-key': k}})\n\
         print(urllib.request.urlopen(r, timeout=20).read().decode().strip())\n\
         import requests\n\
         print(requests.get('https://{CRED_HOST}/requests', headers={{'x-api-key': k}}, timeout=20).text.strip())\n"
    );
    let script_path = lab.tmp.path("client.py");
    std::fs::write(&script_path, py).expect("write client.py");
    let out = lab.run(&[], &format!("python3 {}", script_path.display()));
    assert_eq!(out.code(), 0, "{}", out.describe());
    let recs = lab.host.records();
    lab.assert_key_arrived(&recs, "/urllib");
    // requests (python3-requests, installed by scripts/setup) honours
    // REQUESTS_CA_BUNDLE.
    lab.assert_key_arrived(&recs, "/requests");
    lab.assert_no_key_in_agent_output(&out);
}

#[test]
fn the_sandbox_cannot_find_the_key_or_the_ca_key() {
    let lab = Lab::new();
    // Everything the sandbox can see of environments, command lines and the
    // files under the temporary directories (the CA bundle's included) is
    // printed; the test, outside, looks for the key (the sandbox is never
    // told it: a grep inside would put it in its own cmdline).
    let dump = lab.tmp.path("dump.txt");
    std::fs::write(&dump, "").expect("dump file");
    // The environments and the bundle's directory (what nono-agent made
    // for this sandbox) apart from the rest of /tmp, which other tests'
    // throwaway keys may be in.
    let own = lab.tmp.path("own.txt");
    std::fs::write(&own, "").expect("own dump file");
    let script = format!(
        "{{ env; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do cat \"$f\"; echo; done; \
         echo bundle=$SSL_CERT_FILE; ls -la \"$(dirname \"$SSL_CERT_FILE\")\"; \
         cat \"$(dirname \"$SSL_CERT_FILE\")\"/* ; }} > {own} 2>&1; \
         {{ for d in \"${{TMPDIR:-/tmp}}\" /tmp /var/tmp /dev/shm; do \
           find \"$d\" -xdev -type f -size -2M 2>/dev/null | grep -v '^{tmp}' | while read -r f; do cat \"$f\"; done; done; \
         }} > {dump} 2>&1; \
         curl -sS -H \"x-api-key: ${VAR}\" https://{CRED_HOST}/after-dump",
        tmp = lab.tmp.0.display(),
        dump = dump.display(),
        own = own.display()
    );
    let out = lab.run(&[], &script);
    assert_eq!(out.code(), 0, "{}", out.describe());
    // Files of other processes under /tmp may hold any bytes.
    let others = String::from_utf8_lossy(&std::fs::read(&dump).expect("dump")).into_owned();
    assert!(
        !others.contains(&lab.key),
        "the real key is in a file the sandbox can read"
    );
    let seen = String::from_utf8_lossy(&std::fs::read(&own).expect("own dump")).into_owned();
    assert!(seen.contains("bundle="), "the dump ran: {seen:.2000}");
    assert!(
        seen.contains("nono-placeholder-"),
        "the placeholder is visible (the dump saw the environment)"
    );
    assert!(
        !seen.contains(&lab.key),
        "the real key is visible inside the sandbox"
    );
    assert!(
        !seen.contains("PRIVATE KEY"),
        "a private key is readable inside the sandbox"
    );
    assert!(
        seen.contains("BEGIN CERTIFICATE"),
        "the bundle was readable"
    );
    // And still works: the key arrived.
    let r = lab.host.records();
    lab.assert_key_arrived(&r, "/after-dump");
    lab.assert_no_key_in_agent_output(&out);
}

#[test]
fn the_key_variable_is_removed_even_when_the_profile_passes_it_through() {
    let lab = Lab::new();
    let profile = lab.tmp.path("pass.toml");
    std::fs::write(
        &profile,
        format!(
            "[process]\nenv = [\"PATH\", \"{VAR}\"]\n\
             [filesystem]\nread = [\"/\"]\nexec = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", \"/etc\"]\n\
             write = [\"{}\"]\n",
            lab.tmp.0.display()
        ),
    )
    .expect("profile");
    let out = lab.run(
        &["--profile", &profile.display().to_string()],
        &format!(
            "echo \"seen=${VAR}\"; curl -sS -H \"x-api-key: ${VAR}\" https://{CRED_HOST}/profile"
        ),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(!out.stdout.contains(&lab.key), "{}", out.describe());
    assert!(
        out.stdout.contains("seen=nono-placeholder-"),
        "{}",
        out.describe()
    );
    let r = lab.host.records();
    lab.assert_key_arrived(&r, "/profile");
}

#[test]
fn another_host_gets_an_untouched_tunnel_and_the_placeholder_unchanged() {
    let lab = Lab::new();
    let ca = lab.host.ca_pem.display().to_string();
    // With only the test CA trusted: the plain host's certificate is its
    // own (the tunnel is end to end), the credential host's is not (it is
    // intercepted; curl exits 60).
    let out = lab.run(
        &[],
        &format!(
            "curl -sS --cacert {ca} -H \"x-api-key: ${VAR}\" https://{PLAIN_HOST}/plain; echo plain=$?; \
             curl -sS --cacert {ca} https://{CRED_HOST}/only-test-ca; echo cred=$?"
        ),
    );
    assert!(out.stdout.contains("plain=0"), "{}", out.describe());
    assert!(out.stdout.contains("cred=60"), "{}", out.describe());
    let recs = lab.host.records();
    let plain = recs
        .iter()
        .find(|r| r.path == "/plain")
        .expect("/plain arrived");
    let sent = plain.header("x-api-key");
    assert_eq!(sent.len(), 1);
    assert!(sent[0].starts_with("nono-placeholder-"), "{plain:?}");
    assert!(!recs.iter().any(|r| r.path == "/only-test-ca"));
    lab.assert_no_key_in_agent_output(&out);
}

#[test]
fn a_request_naming_another_host_is_refused_without_the_key() {
    let lab = Lab::new();
    let out = lab.run(
        &[],
        &format!(
            "curl -sS --http1.1 -o /dev/null -w 'h1=%{{http_code}}\\n' -H 'Host: {PLAIN_HOST}' \
               -H \"x-api-key: ${VAR}\" https://{CRED_HOST}/misdirected-h1; \
             curl -sS --http2 -o /dev/null -w 'h2=%{{http_code}}\\n' -H 'Host: evil.test' \
               -H \"x-api-key: ${VAR}\" https://{CRED_HOST}/misdirected-h2; \
             curl -sS --http1.1 -o /dev/null -w 'ok=%{{http_code}}\\n' https://{CRED_HOST}/proper"
        ),
    );
    assert!(out.stdout.contains("h1=421"), "{}", out.describe());
    assert!(out.stdout.contains("h2=421"), "{}", out.describe());
    assert!(
        out.stdout.contains("ok=200"),
        "the check is not over-blocking: {}",
        out.describe()
    );
    let recs = lab.host.records();
    assert!(
        !recs.iter().any(|r| r.path.starts_with("/misdirected")),
        "a misdirected request reached the host: {recs:?}"
    );
    assert!(
        lab.events().contains("refused, no credential sent"),
        "{}",
        lab.events()
    );
    lab.assert_no_key_in_agent_output(&out);
}

#[test]
fn a_host_whose_certificate_does_not_verify_is_refused() {
    let lab = Lab::new();
    // Without --upstream-ca the test host's certificate is from an unknown
    // CA: the proxy must not send the key there.
    let args = [
        "--credential".to_string(),
        format!("{CRED_HOST}:x-api-key=env:{VAR}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sys::run_timeout(
        &mut lab.command(
            &args,
            &format!(
                "curl -sS -H \"x-api-key: ${VAR}\" https://{CRED_HOST}/unverified; echo rc=$?"
            ),
        ),
        Duration::from_secs(60),
    );
    assert!(!out.stdout.contains("rc=0"), "{}", out.describe());
    assert!(lab.host.records().is_empty(), "a request reached the host");
    assert!(lab.events().contains("upstream TLS"), "{}", lab.events());
    lab.assert_no_key_in_agent_output(&out);
}

#[test]
fn sse_arrives_incrementally() {
    let lab = Lab::new();
    let out_file = lab.tmp.path("sse.out");
    std::fs::write(&out_file, "").expect("sse file");
    for http in ["--http1.1", "--http2"] {
        std::fs::write(&out_file, "").expect("sse file");
        let mut cmd = lab.command(
            &lab.with_credential()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &format!(
                "curl -sS -N {http} https://{CRED_HOST}/sse >> {}",
                out_file.display()
            ),
        );
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // The host holds the stream open after event 1 until released: the
        // event must reach the client before that, or the proxy buffered.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut first = false;
        while Instant::now() < deadline {
            if std::fs::read_to_string(&out_file)
                .unwrap_or_default()
                .contains("data: 1")
            {
                first = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        lab.host.release();
        let status = child.wait().expect("wait");
        let text = std::fs::read_to_string(&out_file).unwrap_or_default();
        assert!(
            first,
            "{http}: event 1 did not arrive while the host held the stream open: {text:?}"
        );
        assert!(status.success(), "{http}: {status:?}");
        assert!(text.contains("data: 2"), "{http}: {text:?}");
    }
}

#[test]
fn the_bundle_is_removed_at_exit() {
    let lab = Lab::new();
    let out = lab.run(&[], "echo \"bundle=$SSL_CERT_FILE\"; echo \"node=$NODE_EXTRA_CA_CERTS\"; echo \"pip=$PIP_CERT\"; test -r \"$SSL_CERT_FILE\"");
    assert_eq!(out.code(), 0, "{}", out.describe());
    let path = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("bundle="))
        .expect("bundle line")
        .to_string();
    assert!(path.contains("nono-agent-ca."), "{path}");
    assert!(out.stdout.contains(&format!("node={path}")));
    assert!(out.stdout.contains(&format!("pip={path}")));
    assert!(
        !std::path::Path::new(&path).exists(),
        "{path} outlived the sandbox"
    );
    assert!(
        !std::path::Path::new(&path).parent().expect("dir").exists(),
        "its directory outlived the sandbox"
    );
}

#[test]
fn bad_credentials_are_refused_with_the_reason() {
    let lab = Lab::new();
    let run = |args: &[&str]| {
        let out = sys::run_timeout(&mut lab.command(args, "echo RAN"), Duration::from_secs(30));
        assert_eq!(out.code(), 125, "{args:?}: {}", out.describe());
        assert!(!out.stdout.contains("RAN"), "{args:?} ran the command");
        out.stderr
    };
    let e = run(&["--credential", "api.cred.test=env:X"]);
    assert!(e.contains("expected HOST[:PORT]:HEADER"), "{e}");
    let e = run(&["--credential", "*.cred.test:x-api-key=env:X"]);
    assert!(e.contains("wildcard"), "{e}");
    let e = run(&[
        "--credential",
        &format!("{CRED_HOST}:x-api-key=env:NONO_TEST_UNSET_VAR"),
    ]);
    assert!(
        e.contains("environment variable NONO_TEST_UNSET_VAR is not set"),
        "{e}"
    );
    let e = run(&["--credential", "other.test:x-api-key=env:CRED_TEST_API_KEY"]);
    assert!(e.contains("does not allow other.test:443"), "{e}");
    let e = run(&[
        "--credential",
        &format!("{CRED_HOST}:x-api-key=env:{VAR}"),
        "--upstream-ca",
        "/nonexistent/ca.pem",
    ]);
    assert!(e.contains("--upstream-ca /nonexistent/ca.pem"), "{e}");
    let profile = lab.tmp.path("bad.toml");
    std::fs::write(
        &profile,
        "[[credentials]]\nhost = \"api.cred.test\"\nheader = \"x-api-key\"\n",
    )
    .expect("profile");
    let e = run(&["--profile", &profile.display().to_string()]);
    assert!(
        e.contains(&format!(
            "{}:1:1: a credential needs exactly one of from_env or from_file",
            profile.display()
        )),
        "{e}"
    );
    assert!(!e.contains(&lab.key));
}

#[test]
fn the_agents_own_environ_does_not_hold_the_key() {
    let lab = Lab::new();
    let ready = lab.tmp.path("ready");
    let go = lab.tmp.path("go");
    let mut args = lab.with_credential();
    args.push("--quiet".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = lab
        .command(
            &args,
            &format!(
                "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
                ready.display(),
                go.display()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // nsenter execs the agent: the child's pid is the agent's. Read as
    // root, from outside: what any process allowed to read it would see.
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap_or_default();
    std::fs::write(&go, "").expect("go");
    let status = child.wait().expect("wait");
    assert!(ready.exists(), "the sandbox never started");
    assert!(status.success(), "{status:?}");
    let text = String::from_utf8_lossy(&environ);
    assert!(
        text.contains(&format!("{VAR}=")),
        "read the agent's environ: {text:.300}"
    );
    assert!(
        !text.contains(&lab.key),
        "the agent's environ still holds the key"
    );
}

#[test]
fn the_sandbox_ca_is_name_constrained_to_the_credential_hosts() {
    let lab = Lab::new();
    sys::require_tool("openssl", "reading the sandbox CA");
    let out = lab.run(
        &[],
        "awk '/BEGIN CERTIFICATE/{c=\"\"} {c=c $0 \"\\n\"} END{printf \"%s\", c}' \"$SSL_CERT_FILE\" \
         | openssl x509 -noout -text",
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.contains("nono-agent sandbox"),
        "the last certificate is the sandbox CA: {}",
        out.describe()
    );
    assert!(
        out.stdout.contains("X509v3 Name Constraints: critical"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("DNS:{CRED_HOST}")),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(&format!("DNS:{PLAIN_HOST}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("IP:0.0.0.0/0.0.0.0"),
        "IPs excluded: {}",
        out.stdout
    );
}

#[test]
fn a_killed_agents_bundle_is_removed_by_the_next_run() {
    let lab = Lab::new();
    let ready = lab.tmp.path("ready");
    let go = lab.tmp.path("go");
    let mut child = lab
        .command(
            &lab.with_credential().iter().map(String::as_str).collect::<Vec<_>>(),
            &format!(
                "echo \"$SSL_CERT_FILE\" > {r}.tmp; mv {r}.tmp {r}; while [ ! -e {g} ]; do sleep 0.05; done",
                r = ready.display(),
                g = go.display()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let bundle = PathBuf::from(std::fs::read_to_string(&ready).expect("ready").trim());
    let dir = bundle.parent().expect("bundle dir").to_path_buf();
    assert!(bundle.exists(), "{}", bundle.display());
    child.kill().expect("SIGKILL the agent");
    child.wait().expect("wait");
    std::fs::write(&go, "").expect("go");
    // The agent could not remove it; the next run with credentials does.
    assert!(dir.exists(), "nothing to sweep: {}", dir.display());
    let out = lab.run(&["--quiet"], "true");
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(!dir.exists(), "{} outlived its killed agent", dir.display());
}

#[test]
fn node_trusts_the_sandbox_ca_through_node_extra_ca_certs() {
    let lab = Lab::new();
    sys::require_tool("node", "the Node client");
    // Node 20's fetch ignores proxy variables: CONNECT by hand, then TLS
    // with Node's default trust (its roots plus NODE_EXTRA_CA_CERTS).
    let js = format!(
        r#"const http = require('http'), tls = require('tls');
const u = new URL(process.env.HTTPS_PROXY);
const auth = 'Basic ' + Buffer.from(decodeURIComponent(u.username) + ':' + decodeURIComponent(u.password)).toString('base64');
const req = http.request({{host: u.hostname, port: u.port, method: 'CONNECT', path: '{CRED_HOST}:443',
  headers: {{'Proxy-Authorization': auth, host: '{CRED_HOST}:443'}}}});
req.on('connect', (res, socket) => {{
  if (res.statusCode !== 200) {{ console.log('connect ' + res.statusCode); process.exit(1); }}
  const s = tls.connect({{socket, servername: '{CRED_HOST}', ALPNProtocols: ['http/1.1']}}, () => {{
    s.write('GET /node HTTP/1.1\r\nHost: {CRED_HOST}\r\nx-api-key: ' + process.env.{VAR} + '\r\nConnection: close\r\n\r\n');
  }});
  let out = '';
  s.on('data', d => out += d);
  s.on('end', () => {{ console.log('status: ' + out.split('\r\n')[0]); process.exit(0); }});
  s.on('error', e => {{ console.log('tls error: ' + e.message); process.exit(1); }});
}});
req.on('error', e => {{ console.log('error: ' + e.message); process.exit(1); }});
req.end();
"#
    );
    let script = lab.tmp.path("client.js");
    std::fs::write(&script, js).expect("client.js");
    let out = lab.run(&[], &format!("node {}", script.display()));
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stdout.contains("status: HTTP/1.1 200"),
        "{}",
        out.describe()
    );
    let r = lab.host.records();
    lab.assert_key_arrived(&r, "/node");
}

#[test]
fn a_client_that_pins_the_hosts_key_fails_clearly() {
    let lab = Lab::new();
    sys::require_tool("openssl", "computing the pin");
    let pin = sys::run_timeout(
        Command::new("sh").arg("-c").arg(format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64",
            lab.host.leaf_pem.display()
        )),
        Duration::from_secs(30),
    );
    let pin = pin.stdout.trim().to_string();
    assert!(!pin.is_empty(), "no pin computed");
    let out = lab.run(
        &[],
        &format!(
            "curl -sS --pinnedpubkey sha256//{pin} https://{PLAIN_HOST}/pinned-plain; echo plain=$?; \
             curl -sS --pinnedpubkey sha256//{pin} https://{CRED_HOST}/pinned-cred; echo cred=$?"
        ),
    );
    // The tunnelled host shows its own key; the intercepted one cannot.
    assert!(out.stdout.contains("plain=0"), "{}", out.describe());
    assert!(out.stdout.contains("cred=90"), "{}", out.describe());
    assert!(
        out.stdout.contains("cred=90") && out.stderr.contains("pinned public key"),
        "{}",
        out.describe()
    );
    assert!(!lab.host.records().iter().any(|r| r.path == "/pinned-cred"));
}

#[test]
fn the_seccomp_enforcer_injects_too() {
    let lab = Lab::new();
    let out = lab.run(
        &["--enforcer", "seccomp"],
        &format!("curl -sS -H \"x-api-key: ${VAR}\" https://{CRED_HOST}/seccomp"),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    let r = lab.host.records();
    lab.assert_key_arrived(&r, "/seccomp");
    lab.assert_no_key_in_agent_output(&out);
}

#[test]
fn the_real_variable_is_gone_when_the_placeholder_goes_elsewhere() {
    let lab = Lab::new();
    let args = [
        "--credential".to_string(),
        format!("{CRED_HOST}:x-api-key=env:{VAR};env=OTHER_PLACEHOLDER_VAR"),
        "--upstream-ca".to_string(),
        lab.host.ca_pem.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sys::run_timeout(
        &mut lab.command(
            &args,
            &format!(
                "echo \"real=${{{VAR}:-unset}}\"; echo \"other=$OTHER_PLACEHOLDER_VAR\"; \
                 curl -sS -H \"x-api-key: $OTHER_PLACEHOLDER_VAR\" https://{CRED_HOST}/other-var"
            ),
        ),
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(out.stdout.contains("real=unset"), "{}", out.describe());
    assert!(
        out.stdout.contains("other=nono-placeholder-"),
        "{}",
        out.describe()
    );
    let r = lab.host.records();
    lab.assert_key_arrived(&r, "/other-var");
}

#[test]
fn a_file_credential_is_read_by_the_agent_and_a_readable_one_is_flagged() {
    let lab = Lab::new();
    let key_file = lab.tmp.path("key.txt");
    std::fs::write(&key_file, format!("{}\n", lab.key)).expect("key file");
    let args = [
        "--credential".to_string(),
        format!(
            "{CRED_HOST}:authorization=file:{};format=Bearer {{}};env=FILE_KEY_VAR",
            key_file.display()
        ),
        "--upstream-ca".to_string(),
        lab.host.ca_pem.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sys::run_timeout(
        &mut lab.command(
            &args,
            &format!(
                "curl -sS -H \"authorization: Bearer $FILE_KEY_VAR\" https://{CRED_HOST}/file"
            ),
        ),
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    let r = lab.host.records();
    let f = r
        .iter()
        .find(|r| r.path == "/file")
        .expect("request arrived");
    assert_eq!(
        f.header("authorization"),
        vec![format!("Bearer {}", lab.key).as_str()]
    );
    // Without a profile the sandbox could read the file itself: said.
    assert!(
        out.stderr.contains("is readable inside the sandbox"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_daemon_made_sandbox_injects_too() {
    let daemon = nono_tests::daemon::Daemon::start();
    let mut lab = Lab::new();
    lab.daemon_socket = Some(daemon.socket.clone());
    let out = lab.run(
        &[],
        &format!("echo \"enforcer=$NONO_ENFORCER\"; curl -sS -H \"x-api-key: ${VAR}\" https://{CRED_HOST}/daemon"),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(
        out.stderr.contains("enforcer: bpf (daemon"),
        "{}",
        out.describe()
    );
    let r = lab.host.records();
    lab.assert_key_arrived(&r, "/daemon");
    lab.assert_no_key_in_agent_output(&out);
    drop(lab);
    daemon.cleanup();
}

#[test]
fn a_host_speaking_only_http1_gets_requests_one_at_a_time_on_one_connection() {
    let lab = Lab::new_with(false);
    // curl asks for h2; the proxy offers only what the host speaks. Three
    // URLs on one curl reuse one connection, and a POST body goes through.
    let out = lab.run(
        &[],
        &format!(
            "curl -sS --http2 -w 'v=%{{http_version}} n=%{{num_connects}}\\n' -H \"x-api-key: ${VAR}\" \
               https://{CRED_HOST}/one https://{CRED_HOST}/two && \
             curl -sS -d 'hello=body' -H \"x-api-key: ${VAR}\" https://{CRED_HOST}/post"
        ),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(out.stdout.contains("v=1.1 n=1"), "{}", out.describe());
    assert!(
        out.stdout.contains("v=1.1 n=0"),
        "the second request reused the connection: {}",
        out.describe()
    );
    let recs = lab.host.records();
    for p in ["/one", "/two", "/post"] {
        let r = recs
            .iter()
            .find(|r| r.path == p)
            .unwrap_or_else(|| panic!("{p} arrived: {recs:?}"));
        assert_eq!(r.version, "HTTP/1.1");
        assert_eq!(r.header("x-api-key"), vec![lab.key.as_str()], "{p}");
    }
    let post = recs.iter().find(|r| r.path == "/post").expect("post");
    assert_eq!(post.header("content-length"), vec!["10"]);
    assert_eq!(post.body_len, 10);
}

#[test]
fn an_idle_intercepted_connection_is_closed_like_a_tunnel() {
    let lab = Lab::new();
    sys::require_tool("python3", "the idle client");
    // One request, then silence well past the proxy's 1 s idle timeout:
    // the proxy closes the intercepted connection and records why.
    let py = format!(
        "import base64, http.client, os, ssl, time, urllib.parse\n\
         u = urllib.parse.urlsplit(os.environ['HTTPS_PROXY'])\n\
         auth = base64.b64encode(f'{{u.username}}:{{u.password}}'.encode()).decode()\n\
         c = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(), timeout=20)\n\
         c.set_tunnel('{CRED_HOST}', 443, headers={{'Proxy-Authorization': 'Basic ' + auth}})\n\
         c.request('GET', '/before-idle', headers={{'x-api-key': os.environ['{VAR}']}})\n\
         print('first', c.getresponse().read().decode().strip())\n\
         time.sleep(4)\n\
         try:\n    c.request('GET', '/after-idle')\n    r = c.getresponse()\n    print('second', r.status)\n\
         except Exception as e:\n    print('closed', type(e).__name__)\n"
    );
    let script = lab.tmp.path("idle.py");
    std::fs::write(&script, py).expect("idle.py");
    let out = lab.run(
        &["--proxy-idle-timeout", "1"],
        &format!("python3 {}", script.display()),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert!(out.stdout.contains("first ok"), "{}", out.describe());
    assert!(out.stdout.contains("closed"), "{}", out.describe());
    assert!(
        lab.events()
            .contains("intercepted connection closed: idle timeout after 1 request(s)"),
        "{}",
        lab.events()
    );
    assert!(!lab.host.records().iter().any(|r| r.path == "/after-idle"));
}

#[test]
fn when_the_host_closes_its_side_the_sandbox_reconnects_instead_of_failing() {
    let lab = Lab::new_with(false);
    // The host closes the proxy's connection after /close. The proxy must
    // close the sandbox's connection too (gracefully, after the answer), so
    // curl's next request on "the same" connection goes on a new one
    // instead of getting 502 from a dead upstream.
    let out = lab.run(
        &[],
        &format!(
            "curl -sS -w 'code=%{{http_code}}\\n' -H \"x-api-key: ${VAR}\" \
               https://{CRED_HOST}/close https://{CRED_HOST}/after-close"
        ),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(
        out.stdout.matches("code=200").count(),
        2,
        "{}",
        out.describe()
    );
    let recs = lab.host.records();
    let after = recs
        .iter()
        .find(|r| r.path == "/after-close")
        .unwrap_or_else(|| panic!("/after-close arrived: {recs:?}"));
    assert_eq!(after.header("x-api-key"), vec![lab.key.as_str()]);
}

/// Review (r-review2), FINDING 2 end to end: the proxy fills the real key
/// into every request header holding the placeholder, so a credential host
/// that reflects a header (here CORS: `Origin` comes back as
/// `Access-Control-Allow-Origin`, as any API open to browsers answers)
/// hands the real key to the sandbox, which never held it.
#[test]
fn a_reflected_header_never_gives_the_sandbox_the_real_key() {
    let lab = Lab::new();
    let out = lab.run(
        &[],
        &format!(
            "curl -sS -D - -o /dev/null -H \"x-api-key: ${VAR}\" \
             -H \"Origin: https://${VAR}\" https://{CRED_HOST}/cors"
        ),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    // The request arrived (the receiving side saw the injected key).
    let recs = lab.host.records();
    assert!(recs.iter().any(|r| r.path == "/cors"), "{}", out.describe());
    assert!(
        !out.stdout.contains(&lab.key),
        "the sandbox read the real key from a reflected header: {}",
        out.stdout
    );
}
