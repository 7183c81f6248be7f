//! The lab: namespaces, servers, DNS, CA, and the runs of real clients
//! inside `nono-agent exec`.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::netns::NetFixture;
use crate::oracle::Oracle;
use crate::sys::{self, CmdOutput, TempDir};

use super::background::Background;
use super::cases::{sh_quote, CurlCase, CurlResult, Sandbox};
use super::pki::{make_repo, Pki};
use super::{
    read_jsonl, require_tool, CERT_NAMES, CLIENT_PY, DEFAULT_PINS, DNS_PORT, DNS_PY, DNS_TABLE,
    ECHO_PORT, SERVER, SERVER6, SERVERS_PY,
};

/// The lab. Field order matters: servers are killed before the namespaces go.
pub struct ProxyLab {
    servers: Background,
    dns: Background,
    pub oracle: Oracle,
    pub fx: NetFixture,
    pub tmp: TempDir,
    pub agent: PathBuf,
    pub pki: Pki,
    pub server_log: PathBuf,
    pub dns_log: PathBuf,
    pub client_py: PathBuf,
    /// Marker in the test repository's README.
    pub repo_marker: String,
    counter: AtomicU32,
}

impl ProxyLab {
    pub fn new() -> ProxyLab {
        sys::require_prereqs();
        require_tool("python3", "python3");
        require_tool("openssl", "openssl");
        require_tool("git", "git");
        require_tool("curl", "curl");
        let agent = sys::agent_bin();
        let tmp = TempDir::new("proxylab");
        // Everything in it must be usable by the sandboxed command (uid 0
        // without CAP_DAC_OVERRIDE: plain owner permissions).
        fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o755)).expect("chmod tmp");
        fs::create_dir_all(tmp.path("home")).expect("home dir");
        let pki = Pki::generate(&tmp.path("pki"), CERT_NAMES, &[SERVER, SERVER6]);
        let repo_marker = format!("nono-proxy-test-repo-{}", std::process::id());
        make_repo(&tmp.path("git"), &repo_marker);
        for (name, text) in [
            ("servers.py", SERVERS_PY),
            ("dns.py", DNS_PY),
            ("client.py", CLIENT_PY),
        ] {
            fs::write(tmp.path(name), text).expect("write python helper");
        }
        let fx = NetFixture::new();
        let oracle = Oracle::start(&fx);
        let server_log = tmp.path("server.jsonl");
        let dns_log = tmp.path("dns.jsonl");
        fs::write(&server_log, "").unwrap();
        fs::write(&dns_log, "").unwrap();

        let ready = tmp.path("servers.ready");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", fx.server))
            .arg("--")
            .arg("python3")
            .arg(tmp.path("servers.py"))
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--key")
            .arg(&pki.key)
            .arg("--log")
            .arg(&server_log)
            .arg("--ready")
            .arg(&ready)
            .arg("--git-root")
            .arg(tmp.path("git"))
            .env("HOME", tmp.path("home"))
            .env("GIT_CONFIG_NOSYSTEM", "1");
        let mut servers = Background::spawn(&mut cmd, "servers.py (server netns)", &tmp.0);
        servers.wait_ready(&ready, Duration::from_secs(20));

        let ready = tmp.path("dns.ready");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", fx.client))
            .arg("--")
            .arg("python3")
            .arg(tmp.path("dns.py"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{DNS_PORT}"))
            .arg("--log")
            .arg(&dns_log)
            .arg("--ready")
            .arg(&ready)
            .args(DNS_TABLE);
        let mut dns = Background::spawn(&mut cmd, "dns.py (client netns)", &tmp.0);
        dns.wait_ready(&ready, Duration::from_secs(20));

        ProxyLab {
            servers,
            dns,
            oracle,
            client_py: tmp.path("client.py"),
            fx,
            tmp,
            agent,
            pki,
            server_log,
            dns_log,
            repo_marker,
            counter: AtomicU32::new(0),
        }
    }

    /// A fresh directory inside the lab's temporary directory.
    pub fn scratch(&self, tag: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let d = self.tmp.path(&format!("{tag}-{n}"));
        fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    /// The lab DNS server's address (in the client namespace).
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], DNS_PORT))
    }

    /// The environment every sandboxed command gets (CA bundle, a private
    /// HOME, no system git config).
    pub fn base_env(&self) -> Vec<(String, String)> {
        let ca = self.pki.ca.display().to_string();
        vec![
            ("SSL_CERT_FILE".into(), ca.clone()),
            ("CURL_CA_BUNDLE".into(), ca.clone()),
            ("GIT_SSL_CAINFO".into(), ca),
            ("HOME".into(), self.tmp.path("home").display().to_string()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ]
    }

    /// `nsenter --net=<client> nono-agent exec <proxy options> -- argv...`.
    pub fn command(&self, sb: &Sandbox, argv: &[&str]) -> Command {
        let mut cmd = self.fx.client_command(&self.agent);
        if sb.subcommand.is_empty() {
            cmd.arg("exec");
        } else {
            cmd.args(&sb.subcommand);
        }
        if let Some(e) = &sb.events {
            cmd.arg("--events").arg(e);
        }
        if sb.quiet {
            cmd.arg("--quiet");
        }
        for a in &sb.allow {
            cmd.arg("--allow-domain").arg(a);
        }
        for d in &sb.deny {
            cmd.arg("--deny-domain").arg(d);
        }
        for c in &sb.cidrs {
            cmd.arg("--allow-cidr").arg(c);
        }
        let pins = sb
            .resolve
            .iter()
            .map(String::as_str)
            .chain(DEFAULT_PINS.iter().copied().filter(|_| sb.default_pins));
        for p in pins {
            cmd.arg("--resolve").arg(p);
        }
        let dns = sb
            .dns_server
            .clone()
            .unwrap_or_else(|| self.dns_addr().to_string());
        cmd.arg("--dns-server").arg(dns);
        cmd.args(&sb.extra);
        for k in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in self.base_env().into_iter().chain(sb.env.iter().cloned()) {
            cmd.env(k, v);
        }
        cmd.arg("--").args(argv);
        cmd
    }

    /// Runs `argv` in a sandbox and returns the agent's output.
    pub fn exec(&self, sb: &Sandbox, argv: &[&str]) -> CmdOutput {
        self.exec_timeout(sb, argv, sys::CMD_TIMEOUT)
    }

    pub fn exec_timeout(&self, sb: &Sandbox, argv: &[&str], timeout: Duration) -> CmdOutput {
        sys::run_timeout(&mut self.command(sb, argv), timeout)
    }

    /// Runs `python3 client.py ARGS...` in a sandbox; returns its JSON output
    /// and the agent's output.
    pub fn python(&self, sb: &Sandbox, args: &[&str]) -> (Value, CmdOutput) {
        self.python_timeout(sb, args, sys::CMD_TIMEOUT)
    }

    pub fn python_timeout(
        &self,
        sb: &Sandbox,
        args: &[&str],
        timeout: Duration,
    ) -> (Value, CmdOutput) {
        let client = self.client_py.display().to_string();
        let mut argv = vec!["python3", client.as_str()];
        argv.extend_from_slice(args);
        let out = self.exec_timeout(sb, &argv, timeout);
        let v = out
            .stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .unwrap_or_else(|| panic!("client.py {args:?} printed no JSON: {}", out.describe()));
        (v, out)
    }

    /// Runs raw request cases (`[{"name", "data", "port"?}]`, see client.py)
    /// in one sandbox; returns `{name: {status, head, body, ...}}`.
    pub fn raw(&self, sb: &Sandbox, cases: &Value) -> (Value, CmdOutput) {
        let f = self.scratch("raw").join("cases.json");
        fs::write(&f, serde_json::to_vec(cases).unwrap()).expect("write cases");
        let f = f.display().to_string();
        self.python(sb, &["raw", &f])
    }

    /// Runs every case with curl, one after another, in one sandbox.
    pub fn curl(&self, sb: &Sandbox, cases: &[CurlCase]) -> (Vec<CurlResult>, CmdOutput) {
        let dir = self.scratch("curl");
        let d = dir.display().to_string();
        let mut script = String::from(
            "run() {\n  n=$1; shift; u=$1; shift\n  \
             curl -sS --max-time 20 -o \"$D/$n.body\" -w '%{http_code} %{http_connect}' \
             \"$@\" \"$u\" > \"$D/$n.codes\" 2> \"$D/$n.err\"\n  echo $? > \"$D/$n.exit\"\n}\n",
        );
        script.insert_str(0, &format!("D={}\n", sh_quote(&d)));
        for (i, c) in cases.iter().enumerate() {
            script.push_str(&format!("run c{i} {}", sh_quote(&c.url)));
            for a in &c.args {
                script.push(' ');
                script.push_str(&sh_quote(a));
            }
            script.push('\n');
        }
        let path = dir.join("run.sh");
        fs::write(&path, script).expect("write curl script");
        let p = path.display().to_string();
        let out = self.exec_timeout(
            sb,
            &["sh", &p],
            Duration::from_secs(30 * cases.len() as u64 + 30),
        );
        let read = |n: usize, ext: &str| {
            fs::read_to_string(dir.join(format!("c{n}.{ext}"))).unwrap_or_default()
        };
        let results = cases
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let codes = read(i, "codes");
                let mut it = codes.split_whitespace();
                let http_code = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let connect_code = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                CurlResult {
                    name: c.name.clone(),
                    url: c.url.clone(),
                    exit: read(i, "exit").trim().parse().unwrap_or(-1),
                    http_code,
                    connect_code,
                    body: read(i, "body"),
                    stderr: read(i, "err"),
                }
            })
            .collect();
        (results, out)
    }

    /// Every JSON line the test servers logged.
    pub fn server_records(&self) -> Vec<Value> {
        read_jsonl(&self.server_log)
    }

    /// HTTP requests the test servers received whose target contains `needle`.
    pub fn requests_matching(&self, needle: &str) -> Vec<Value> {
        self.server_records()
            .into_iter()
            .filter(|r| r["kind"] == "request")
            .filter(|r| r["target"].as_str().is_some_and(|t| t.contains(needle)))
            .collect()
    }

    /// Names the lab's DNS server was asked for.
    pub fn dns_queries(&self) -> Vec<String> {
        read_jsonl(&self.dns_log)
            .into_iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect()
    }

    /// HTTP requests the test servers received for exactly `target`.
    pub fn requests_to(&self, target: &str) -> Vec<Value> {
        self.server_records()
            .into_iter()
            .filter(|r| r["kind"] == "request" && r["target"] == target)
            .collect()
    }

    /// Echo connections the echo server accepted.
    pub fn echo_connections(&self) -> usize {
        self.server_records()
            .iter()
            .filter(|r| r["kind"] == "echo" && r["port"] == ECHO_PORT)
            .count()
    }

    /// Fails if a lab process died (a crashed server would make "nothing
    /// arrived" vacuous).
    pub fn assert_servers_alive(&mut self) {
        for bg in [&mut self.servers, &mut self.dns] {
            if let Ok(Some(st)) = bg.child.try_wait() {
                panic!(
                    "{} exited early ({st:?}): {}",
                    bg.what,
                    fs::read_to_string(&bg.stderr).unwrap_or_default()
                );
            }
        }
    }
}

impl Default for ProxyLab {
    fn default() -> Self {
        Self::new()
    }
}
