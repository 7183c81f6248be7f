//! Running the probe outside and inside `nono-agent exec`: `ExecOpts`,
//! `Harness`, `exec_command`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::netns::{NetFixture, PROXY_V4};
use crate::oracle::Oracle;
use crate::sys::{self, CmdOutput};

use super::result::ProbeResult;
use super::{fresh_marker, Enforcement, RunAs};

/// Options for one `nono-agent exec` invocation.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    pub enforcer: Option<String>,
    pub proxy_endpoints: Vec<SocketAddr>,
    pub events: Option<PathBuf>,
    pub quiet: bool,
    /// Run inside the fixture's client netns (otherwise in the test's netns;
    /// only for commands that send no traffic).
    pub in_client_netns: bool,
    /// Run the agent as this unprivileged identity (`setpriv`).
    pub user: Option<RunAs>,
    /// More `exec` options, before `--` (e.g. `--profile default`,
    /// `--loopback-port P`, `--user nobody`).
    pub extra: Vec<String>,
    /// Environment variables set for the agent (e.g. a `HOME` the
    /// unprivileged agent can read, where it looks up user profiles).
    pub env: Vec<(String, String)>,
    /// `--daemon-socket PATH`: the sandbox is made by that daemon (see
    /// [`crate::daemon::Daemon`]); sandboxed probe runs then assert the
    /// `bpf (daemon)` enforcer line.
    pub daemon_socket: Option<PathBuf>,
}

impl ExecOpts {
    /// `--enforcer` for `e`, in the client netns, as a fresh unprivileged
    /// user for [`Enforcement::SeccompUser`].
    pub fn for_enforcement(e: Enforcement) -> ExecOpts {
        ExecOpts {
            enforcer: Some(e.flag().to_string()),
            in_client_netns: true,
            user: (!e.privileged()).then(RunAs::fresh),
            daemon_socket: (e == Enforcement::DaemonUser)
                .then(|| crate::daemon::Daemon::shared().socket.clone()),
            extra: if e.transparent() {
                vec!["--transparent".into()]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }
}

/// A fixture + oracle + binaries. Field order matters: the oracle (sockets in
/// the server netns) is dropped before the namespaces.
pub struct Harness {
    pub oracle: Oracle,
    pub fx: NetFixture,
    pub probe: PathBuf,
    pub agent: PathBuf,
}

impl Harness {
    /// `probe` is `env!("CARGO_BIN_EXE_nono-probe")` from the test crate.
    pub fn new(probe: &str) -> Harness {
        sys::require_prereqs();
        Harness::with_agent(probe, sys::agent_bin())
    }

    /// Like [`Harness::new`] with an explicit agent path (the harness
    /// self-test, which never runs the agent, passes a dummy one).
    pub fn with_agent(probe: &str, agent: PathBuf) -> Harness {
        sys::require_prereqs();
        let probe = PathBuf::from(probe);
        assert!(
            probe.is_file(),
            "nono-probe not found at {}",
            probe.display()
        );
        let fx = NetFixture::new();
        let oracle = Oracle::start(&fx);
        Harness {
            oracle,
            fx,
            probe,
            agent,
        }
    }

    /// A fresh proxy endpoint 203.0.113.2:<port> with a listener behind it.
    pub fn proxy_endpoint(&self) -> SocketAddr {
        let port = self.fx.port();
        self.oracle.listen_tcp(port);
        SocketAddr::new(PROXY_V4.into(), port)
    }

    /// Runs the probe in the client netns as root, outside any sandbox.
    pub fn probe_outside(&self, args: &[String]) -> (ProbeResult, CmdOutput) {
        let out = sys::run_timeout(
            self.fx.client_command(&self.probe).args(args),
            sys::CMD_TIMEOUT,
        );
        let r = ProbeResult::parse(&out.stdout).unwrap_or_else(|| {
            panic!(
                "probe {args:?} (outside) printed no result: {}",
                out.describe()
            )
        });
        (r, out)
    }

    /// The `nono-agent exec ... --` command line (without the child command).
    /// With `opts.user`, the agent runs through `setpriv` as that user (from
    /// a copy any user can execute, if need be).
    pub fn agent_command(&self, opts: &ExecOpts) -> Command {
        exec_command(&self.agent, opts.in_client_netns.then_some(&self.fx), opts)
    }

    /// Runs `nono-agent exec [opts] -- argv...` and returns its output.
    pub fn agent_exec(&self, opts: &ExecOpts, argv: &[&str]) -> CmdOutput {
        sys::run_timeout(self.agent_command(opts).args(argv), sys::CMD_TIMEOUT)
    }

    /// Options for a sandboxed run under `e` with a fresh proxy endpoint (so
    /// the allow-list is never empty).
    pub fn opts(&self, e: Enforcement) -> ExecOpts {
        ExecOpts {
            proxy_endpoints: vec![self.proxy_endpoint()],
            ..ExecOpts::for_enforcement(e)
        }
    }

    /// Runs the probe inside a sandbox (client netns, enforcement `e`, a
    /// fresh proxy endpoint so the allow-list is never empty).
    pub fn probe_sandboxed(&self, e: Enforcement, args: &[String]) -> (ProbeResult, CmdOutput) {
        self.probe_sandboxed_with(&self.opts(e), args)
    }

    /// Runs the probe inside a sandbox with `opts`, adding a fresh
    /// `--marker` (see [`fresh_marker`]); the result echoes it.
    pub fn probe_sandboxed_with(
        &self,
        opts: &ExecOpts,
        args: &[String],
    ) -> (ProbeResult, CmdOutput) {
        let mut cmd = self.agent_command(opts);
        cmd.arg(self.probe_for(opts))
            .args(args)
            .args(["--marker".to_string(), fresh_marker()]);
        let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        let r = ProbeResult::parse(&out.stdout).unwrap_or_else(|| {
            panic!(
                "probe {args:?} (sandboxed, {:?} as {:?}) printed no result: {}",
                opts.enforcer,
                opts.user,
                out.describe()
            )
        });
        if opts.daemon_socket.is_some() && !opts.quiet {
            assert!(
                out.stderr
                    .lines()
                    .any(|l| l == "nono-agent: enforcer: bpf (daemon)"),
                "probe {args:?}: the agent did not say `nono-agent: enforcer: bpf (daemon)`: {}",
                out.describe()
            );
        }
        if let Some(u) = opts.user {
            assert_eq!(
                r.raw["uid"].as_u64(),
                Some(u64::from(u.uid)),
                "the sandboxed probe did not run as uid {}: {}",
                u.uid,
                r.raw
            );
        }
        (r, out)
    }

    /// Runs the probe in the client netns as `user` (no sandbox).
    pub fn probe_outside_as(&self, user: RunAs, args: &[String]) -> (ProbeResult, CmdOutput) {
        let setpriv = sys::require_tool("setpriv", "runs the probe unprivileged");
        let mut cmd = self.fx.client_command(&setpriv);
        cmd.args(user.setpriv_args())
            .arg(sys::accessible(&self.probe))
            .args(args);
        let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        let r = ProbeResult::parse(&out.stdout).unwrap_or_else(|| {
            panic!(
                "probe {args:?} (outside, uid {}) printed no result: {}",
                user.uid,
                out.describe()
            )
        });
        (r, out)
    }

    /// The probe binary as the sandbox for `opts` can execute it.
    pub fn probe_for(&self, opts: &ExecOpts) -> PathBuf {
        match opts.user {
            Some(_) => sys::accessible(&self.probe),
            None => self.probe.clone(),
        }
    }

    pub fn probe_path(&self) -> &str {
        self.probe.to_str().expect("utf-8 probe path")
    }
}

/// `[nsenter --net=<client netns>] [setpriv <user>] <agent> exec [opts] --`
/// (without the child command): `netns` runs it in a fixture's client
/// netns, `opts.user` as that unprivileged user (from a copy of the agent
/// any user can execute, if need be).
pub fn exec_command(agent: &Path, netns: Option<&NetFixture>, opts: &ExecOpts) -> Command {
    let agent = match opts.user {
        Some(_) => sys::accessible(agent),
        None => agent.to_path_buf(),
    };
    let mut cmd = match opts.user {
        None => match netns {
            Some(fx) => fx.client_command(&agent),
            None => Command::new(&agent),
        },
        Some(u) => {
            let setpriv = sys::require_tool("setpriv", "runs the agent unprivileged");
            let mut c = match netns {
                Some(fx) => fx.client_command(&setpriv),
                None => Command::new(&setpriv),
            };
            c.args(u.setpriv_args()).arg(&agent);
            c
        }
    };
    cmd.arg("exec");
    if let Some(e) = &opts.enforcer {
        cmd.args(["--enforcer", e]);
    }
    for pe in &opts.proxy_endpoints {
        cmd.arg("--proxy-endpoint").arg(pe.to_string());
    }
    if let Some(s) = &opts.daemon_socket {
        cmd.arg("--daemon-socket").arg(s);
    }
    if let Some(ev) = &opts.events {
        cmd.arg("--events").arg(ev);
    }
    if opts.quiet {
        cmd.arg("--quiet");
    }
    cmd.args(&opts.extra);
    cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
    cmd.arg("--");
    cmd
}
