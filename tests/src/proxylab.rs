//! Fixture for the filtering-proxy tests: the client/server namespaces of
//! [`NetFixture`] plus real servers in the server namespace, a logging DNS
//! server in the client namespace, a test CA, and helpers that run real
//! clients (curl, Python urllib, git, raw sockets) inside `nono-agent exec`.
//!
//! ```text
//!   client netns                                  server netns
//!   nono-agent exec (proxy on 127.0.0.1:EPH)      servers.py on [::] (v4+v6):
//!     └─ curl / python / git (sandboxed)            80, 8080    HTTP
//!   dns.py on 127.0.0.1:5353 (logs queries)         443, 8443   HTTPS (test CA),
//!                                                               git smart HTTP
//!                                                   7000        TCP echo
//!                                                   7001        TCP echo, holds
//!                                                               30 s after EOF
//! ```
//!
//! Every host name a test uses is pinned with `--resolve` (see
//! [`DEFAULT_PINS`]) and every other lookup goes to the lab's own DNS server
//! (`--dns-server`), so the machine's resolver is never asked. Names are pinned
//! to the test server even when the proxy must refuse them, so that a wrong
//! "allow" becomes visible in the server's request log.
//!
//! Server processes are killed (by pid) before the namespaces are removed;
//! the temporary directory (CA, logs, repository) is removed last.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::netns::NetFixture;
use crate::oracle::Oracle;
use crate::sys::{self, CmdOutput, TempDir};

pub const SERVERS_PY: &str = include_str!("proxylab/servers.py");
pub const DNS_PY: &str = include_str!("proxylab/dns.py");
pub const CLIENT_PY: &str = include_str!("proxylab/client.py");

/// The test server's IPv4 address (as a string, for URLs and pins).
pub const SERVER: &str = "198.51.100.2";
/// The test server's IPv6 address.
pub const SERVER6: &str = "2001:db8:100::2";
/// Port of the lab's DNS server (on 127.0.0.1 in the client namespace).
pub const DNS_PORT: u16 = 5353;
/// Port of the echo server.
pub const ECHO_PORT: u16 = 7000;
/// Port of the echo server that keeps connections open for 30 s after the
/// client's EOF.
pub const HOLD_PORT: u16 = 7001;

/// `--resolve` pins every sandbox gets unless told otherwise.
pub const DEFAULT_PINS: &[&str] = &[
    "allowed.test=198.51.100.2",
    "a.wild.test=198.51.100.2",
    "b.c.wild.test=198.51.100.2",
    "wild.test=198.51.100.2",
    "evilwild.test=198.51.100.2",
    "blocked.wild.test=198.51.100.2",
    "evil.test=198.51.100.2",
    "evilallowed.test=198.51.100.2",
    "allowed.test.evil.test=198.51.100.2",
    "git.test=198.51.100.2",
    "echo.test=198.51.100.2",
    "b-only.test=198.51.100.2",
    // bücher.test
    "xn--bcher-kva.test=198.51.100.2",
    // "аllowed.test" with a Cyrillic а (U+0430): a lookalike of allowed.test
    "xn--llowed-2nf.test=198.51.100.2",
    "v6.test=2001:db8:100::2",
    "metadata.test=169.254.169.254",
    "mapped-metadata.test=::ffff:169.254.169.254",
    "nat64-metadata.test=64:ff9b::a9fe:a9fe",
    "private.test=10.1.2.3",
    "mapped-private.test=::ffff:10.1.2.3",
    "cgnat.test=100.64.1.2",
    "loop.test=127.0.0.1",
    "mixed.test=10.1.2.3,198.51.100.2",
];

/// Names the lab's DNS server knows (never pinned).
pub const DNS_TABLE: &[&str] = &[
    "dns-ok.test=198.51.100.2",
    "dns-denied.test=198.51.100.2",
    "dns-meta.test=169.254.169.254",
    "dns-v6.test=2001:db8:100::2",
];

/// Names in the test server's certificate.
pub const CERT_NAMES: &[&str] = &[
    "allowed.test",
    "*.wild.test",
    "*.c.wild.test",
    "git.test",
    "echo.test",
    "b-only.test",
    "v6.test",
    "xn--bcher-kva.test",
    "evil.test",
    "evilallowed.test",
    "dns-ok.test",
];

/// Panics (never skips) unless `tool` is on PATH; names the Debian package.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "required tool `{tool}` not found in PATH: install the Debian package `{package}` \
                 (the proxy tests need it; nothing is skipped)"
            )
        })
}

/// A process the test started; stopped by its pid and reaped on drop.
pub struct Background {
    pub child: Child,
    pub what: String,
    pub stderr: PathBuf,
}

impl Background {
    pub fn spawn(cmd: &mut Command, what: &str, logdir: &Path) -> Background {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let stdout = logdir.join(format!("bg{n}.stdout"));
        let stderr = logdir.join(format!("bg{n}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Background {
            child,
            what: what.to_string(),
            stderr,
        }
    }

    /// Waits for `ready` to exist; panics with the process's stderr if it
    /// exits or the file does not appear in time.
    pub fn wait_ready(&mut self, ready: &Path, timeout: Duration) {
        let mut exited = None;
        let ok = sys::wait_until(timeout, || {
            if ready.exists() {
                return true;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                exited = Some(st);
                return true;
            }
            false
        });
        if !ok || exited.is_some() || !ready.exists() {
            panic!(
                "{} did not become ready (exit: {exited:?}); stderr:\n{}",
                self.what,
                fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Background {
    /// SIGTERM (an agent forwards it to its command and cleans up), then
    /// SIGKILL after 5 s; always reaped.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: plain syscall on the pid of a child we have not reaped.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let done = sys::wait_until(Duration::from_secs(5), || {
                !matches!(self.child.try_wait(), Ok(None))
            });
            if !done {
                sys::kill_pid(self.pid());
            }
        }
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate signed by it.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn run_in(dir: &Path, program: &str, args: &[&str]) -> CmdOutput {
    let out = sys::run_timeout(
        Command::new(program).current_dir(dir).args(args),
        sys::CMD_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        out.describe()
    );
    out
}

impl Pki {
    /// Generates a CA and a server certificate for `names` and `ips` in `dir`
    /// with the openssl command-line tool (P-256, valid for a week).
    pub fn generate(dir: &Path, names: &[&str], ips: &[&str]) -> Pki {
        require_tool("openssl", "openssl");
        fs::create_dir_all(dir).expect("pki dir");
        run_in(
            dir,
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "7",
                "-subj",
                "/CN=nono-tests throwaway CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        run_in(
            dir,
            "openssl",
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=allowed.test",
            ],
        );
        let san: Vec<String> = names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .chain(ips.iter().map(|i| format!("IP:{i}")))
            .collect();
        fs::write(
            dir.join("server.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n\
                 authorityKeyIdentifier=keyid,issuer\nsubjectAltName={}\n",
                san.join(",")
            ),
        )
        .expect("write server.ext");
        run_in(
            dir,
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "7",
                "-extfile",
                "server.ext",
            ],
        );
        Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// Creates a bare repository `<root>/repo.git` with one commit whose
/// `README` contains `marker`, ready for `git http-backend`.
pub fn make_repo(root: &Path, marker: &str) {
    require_tool("git", "git");
    let work = root.join("work");
    fs::create_dir_all(&work).expect("repo work dir");
    let git = |dir: &Path, args: &[&str]| {
        let out = sys::run_timeout(
            Command::new("git")
                .current_dir(dir)
                .env("HOME", root)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_AUTHOR_NAME", "nono tests")
                .env("GIT_AUTHOR_EMAIL", "tests@nono.test")
                .env("GIT_COMMITTER_NAME", "nono tests")
                .env("GIT_COMMITTER_EMAIL", "tests@nono.test")
                .args(args),
            sys::CMD_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            out.describe()
        );
    };
    git(&work, &["init", "-q", "-b", "main"]);
    fs::write(work.join("README"), format!("{marker}\n")).expect("README");
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "test repository"]);
    git(root, &["clone", "-q", "--bare", "work", "repo.git"]);
    git(&root.join("repo.git"), &["update-server-info"]);
}

/// What one `nono-agent exec` gets.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub cidrs: Vec<String>,
    pub resolve: Vec<String>,
    /// Add [`DEFAULT_PINS`] (default true).
    pub default_pins: bool,
    /// `--dns-server`; the lab's DNS server when `None`.
    pub dns_server: Option<String>,
    pub events: Option<PathBuf>,
    pub quiet: bool,
    /// Extra environment for the agent (inherited by the command).
    pub env: Vec<(String, String)>,
    /// Extra agent options (before `--`).
    pub extra: Vec<String>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            allow: Vec::new(),
            deny: Vec::new(),
            cidrs: Vec::new(),
            resolve: Vec::new(),
            default_pins: true,
            dns_server: None,
            events: None,
            quiet: false,
            env: Vec::new(),
            extra: Vec::new(),
        }
    }
}

impl Sandbox {
    pub fn allow(allow: &[&str]) -> Sandbox {
        Sandbox {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn deny(mut self, deny: &[&str]) -> Sandbox {
        self.deny.extend(deny.iter().map(|s| s.to_string()));
        self
    }

    pub fn cidr(mut self, cidrs: &[&str]) -> Sandbox {
        self.cidrs.extend(cidrs.iter().map(|s| s.to_string()));
        self
    }

    pub fn events(mut self, path: &Path) -> Sandbox {
        self.events = Some(path.to_path_buf());
        self
    }
}

/// One curl request in a table (see [`ProxyLab::curl`]).
#[derive(Debug, Clone)]
pub struct CurlCase {
    pub name: String,
    pub url: String,
    pub args: Vec<String>,
}

impl CurlCase {
    pub fn new(name: &str, url: &str) -> CurlCase {
        CurlCase {
            name: name.to_string(),
            url: url.to_string(),
            args: Vec::new(),
        }
    }
}

/// What curl reported for one [`CurlCase`].
#[derive(Debug, Clone)]
pub struct CurlResult {
    pub name: String,
    pub url: String,
    pub exit: i32,
    /// `%{http_code}`: the final response (0 if none).
    pub http_code: u16,
    /// `%{http_connect}`: the proxy's answer to CONNECT (0 if none).
    pub connect_code: u16,
    pub body: String,
    pub stderr: String,
}

impl CurlResult {
    /// The proxy's status: the CONNECT answer for tunnels, else the response.
    pub fn proxy_status(&self) -> u16 {
        if self.connect_code != 0 {
            self.connect_code
        } else {
            self.http_code
        }
    }
}

/// Quotes `s` for /bin/sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

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
        cmd.arg("exec");
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

/// Parses every JSON line of a file (missing file: none).
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect()
}

/// The proxy events (`source == "proxy"`) in an events file.
pub fn proxy_events(path: &Path) -> Vec<Value> {
    read_jsonl(path)
        .into_iter()
        .filter(|e| e["source"] == "proxy")
        .collect()
}

/// The `http://nono:SECRET@127.0.0.1:PORT` URL split into (secret, port).
pub fn parse_proxy_url(url: &str) -> Option<(String, u16)> {
    let rest = url.trim().strip_prefix("http://nono:")?;
    let (secret, hostport) = rest.split_once('@')?;
    let port = hostport
        .trim_end_matches('/')
        .strip_prefix("127.0.0.1:")?
        .parse()
        .ok()?;
    Some((secret.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_url_parsing() {
        assert_eq!(
            parse_proxy_url("http://nono:abc123@127.0.0.1:41077\n"),
            Some(("abc123".to_string(), 41077))
        );
        assert_eq!(parse_proxy_url("http://other:x@127.0.0.1:1"), None);
        assert_eq!(parse_proxy_url("http://nono:x@[::1]:1"), None);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
