//! Command-line interface: clap types only. Each command's arguments are
//! turned into plain data (`plan::ExecRequest`, `nono_proxy::ProxyConfig`)
//! right here, so nothing past this module knows about clap.

use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::enforcer::Requested;
use crate::plan::ExecRequest;
use nono_proxy::{CidrRule, DomainRule, Limits, Pin, ProxyConfig, ProxyPolicy, Upstream};

/// `--version`: the package version and the git commit it was built from
/// (`unknown` when built without git; see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("NONO_AGENT_GIT_COMMIT"),
    ")"
);

/// Run a command with its network confined to loopback and its proxy.
#[derive(Debug, Parser)]
#[command(name = "nono-agent", version = VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD in a new sandbox: it may connect to 127.0.0.1 / ::1 on any
    /// port and to the proxy endpoints, nothing else.
    Exec(ExecArgs),
    /// Remove sandboxes left behind by agents that died (kills their
    /// processes first).
    Cleanup(CleanupArgs),
    /// Report what this host supports and which enforcer `auto` would pick.
    Doctor(DoctorArgs),
    /// Serve the BPF enforcer to every local user (root; see
    /// dist/systemd): load the programs once, confine each client's
    /// sandbox through per-sandbox map entries.
    Daemon(DaemonArgs),
    /// Run the filtering proxy alone (no sandbox).
    Proxy(StandaloneProxyArgs),
    /// List, show and validate profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Check and show the host configuration (/etc/nono-agent/config.toml).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check that this host enforces: run the escape battery against every
    /// enforcer it offers (the daemon, direct BPF, seccomp), each vector
    /// first shown to reach a private test host, then refused inside a
    /// sandbox. Exit 0: all blocked; 1: a leak; 3: a check did not work;
    /// 125: selftest could not run.
    Selftest(SelftestArgs),
    /// Internal: the probe selftest runs inside each sandbox.
    #[command(name = "__probe", hide = true)]
    Probe {
        /// The attempts, as JSON.
        #[arg(long)]
        plan: String,
    },
    /// Print a shell completion script to stdout (e.g. `nono-agent
    /// completions bash > /usr/share/bash-completion/completions/nono-agent`).
    Completions {
        /// The shell to complete for.
        shell: Shell,
    },
}

#[derive(Debug, clap::Args)]
pub struct SelftestArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Test only these enforcers (repeatable or comma-separated); one that
    /// is not available makes selftest exit 125. Default: every enforcer
    /// this host offers (the others are reported as not tried, and why).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub enforcer: Vec<crate::selftest::report::EnforcerKind>,

    /// The daemon's socket (the daemon enforcer is tested when it answers).
    #[arg(
        long,
        value_name = "PATH",
        env = "NONO_AGENT_DAEMON_SOCKET",
        default_value = crate::daemon::client::DEFAULT_SOCKET
    )]
    pub daemon_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a host configuration file (as `exec` would: syntax, values,
    /// ownership); exit non-zero with the error if it is refused.
    Validate {
        /// The file [default: $NONO_AGENT_CONFIG or /etc/nono-agent/config.toml].
        file: Option<PathBuf>,
    },
    /// The configuration `exec` uses, every value with where it comes from.
    Show,
}

/// Shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// The profiles that can be named, and where each comes from.
    List,
    /// The fully resolved policy of a profile (extends applied).
    Show {
        /// Profile name or path.
        profile: String,
    },
    /// Check a profile file; exit non-zero with the error if it is invalid.
    Validate {
        /// Path to the TOML file.
        file: PathBuf,
    },
}

/// What the filtering proxy lets through.
#[derive(Debug, Clone, clap::Args, Default)]
pub struct ProxyArgs {
    /// Allow this host through the proxy: `example.com` (exactly), or
    /// `*.example.com` (any subdomain, not the apex); `:PORT` to allow that
    /// port instead of 80 and 443. Giving any proxy option starts the proxy.
    #[arg(long = "allow-domain", value_name = "PATTERN")]
    pub allow_domain: Vec<DomainRule>,

    /// Refuse this host even if an --allow-domain matches (checked first).
    #[arg(long = "deny-domain", value_name = "PATTERN")]
    pub deny_domain: Vec<DomainRule>,

    /// Allow IP literals and resolved addresses in this network, on PORT or
    /// any port: `10.0.0.0/8:5432`, `[2001:db8::/32]:443`. Needed for
    /// loopback, private, CGNAT and ULA addresses; link-local and metadata
    /// addresses can never be allowed.
    #[arg(long = "allow-cidr", value_name = "NET[:PORT]")]
    pub allow_cidr: Vec<CidrRule>,

    /// Resolve NAME to these addresses without DNS (repeatable).
    #[arg(long = "resolve", value_name = "NAME=ADDR[,ADDR]")]
    pub resolve: Vec<Pin>,

    /// Ask this DNS server instead of the system resolver.
    #[arg(long = "dns-server", value_name = "ADDR:PORT")]
    pub dns_server: Option<SocketAddr>,

    /// Send every allowed request through this HTTP proxy.
    #[arg(long = "upstream-proxy", value_name = "http://HOST:PORT")]
    pub upstream_proxy: Option<Upstream>,

    /// Client connections the proxy serves at once (more get 503).
    #[arg(long = "proxy-max-connections", default_value_t = 4096)]
    pub max_connections: usize,

    /// Seconds without traffic after which a tunnel is closed.
    #[arg(long = "proxy-idle-timeout", default_value_t = 300)]
    pub idle_timeout: u64,

    /// Seconds allowed for connecting to a destination.
    #[arg(long = "proxy-connect-timeout", default_value_t = 10)]
    pub connect_timeout: u64,
}

impl From<ProxyArgs> for ProxyConfig {
    /// Timeouts and the connection limit are at least 1: 0 would fail every
    /// request. The secret and the sandbox id are the caller's to fill in.
    fn from(a: ProxyArgs) -> Self {
        Self {
            policy: ProxyPolicy {
                allow: a.allow_domain,
                deny: a.deny_domain,
                cidrs: a.allow_cidr,
                deny_cidrs: Vec::new(),
            },
            pins: a.resolve,
            dns_server: a.dns_server,
            secret: None,
            upstream: a.upstream_proxy,
            limits: Limits {
                connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
                idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
                max_connections: a.max_connections.max(1),
                ..Default::default()
            },
            sandbox: String::new(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct StandaloneProxyArgs {
    /// Address to listen on (repeatable), e.g. 127.0.0.1:3128.
    #[arg(long, required = true, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,

    /// Require `Proxy-Authorization: Basic nono:SECRET`.
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,

    /// Write every decision as a JSON line to PATH (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,

    #[command(flatten)]
    pub proxy: ProxyArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Enforcer {
    /// bpf when it can be loaded and attached here, else seccomp.
    Auto,
    /// cgroup sock_addr BPF programs (needs root or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN).
    Bpf,
    /// A seccomp user-notification supervisor (works unprivileged).
    Seccomp,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// An address the sandbox may connect to besides loopback, e.g. its
    /// proxy: `198.51.100.2:3128` or `[2001:db8::1]:8080`. Up to 16.
    #[arg(long = "proxy-endpoint", value_name = "ADDR:PORT")]
    pub proxy_endpoints: Vec<SocketAddr>,

    /// Which enforcer to use.
    #[arg(long, value_enum, default_value_t = Enforcer::Auto)]
    pub enforcer: Enforcer,

    /// Write every event as a JSON line to PATH (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,

    /// Run the command even if no enforcer can be applied (it is then NOT
    /// confined; a warning is printed).
    #[arg(long)]
    pub allow_unenforced: bool,

    /// A profile NAME (looked up in $XDG_CONFIG_HOME/nono-agent/profiles,
    /// /etc/nono-agent/profiles, then the built-ins) or a PATH to a TOML file.
    /// The flags below add to it.
    #[arg(long, value_name = "NAME|PATH")]
    pub profile: Option<String>,

    /// Allow reading beneath PATH (implies the `default` profile if none is given).
    #[arg(long = "read", value_name = "PATH")]
    pub read: Vec<PathBuf>,

    /// Allow reading and writing beneath PATH.
    #[arg(long = "write", value_name = "PATH")]
    pub write: Vec<PathBuf>,

    /// Allow executing beneath PATH.
    #[arg(long = "exec", value_name = "PATH")]
    pub exec: Vec<PathBuf>,

    /// Narrow loopback to these ports (plus the proxy); repeatable. Without
    /// it (and without a profile saying otherwise) every loopback port is
    /// reachable.
    #[arg(long = "loopback-port", value_name = "PORT")]
    pub loopback_ports: Vec<u16>,

    /// Allow connecting to this daemon socket (docker.sock, the system bus
    /// ... are refused otherwise).
    #[arg(long = "allow-unix-socket", value_name = "PATH")]
    pub allow_unix_sockets: Vec<PathBuf>,

    /// Run the command as this user (name or uid); needs root.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Run even if the kernel cannot enforce everything the profile asks of
    /// Landlock (what is not enforced is printed).
    #[arg(long)]
    pub allow_degraded: bool,

    /// Do not print the summary line at exit.
    #[arg(long, short)]
    pub quiet: bool,

    /// The daemon's socket: with `--enforcer auto` or `bpf`, the sandbox is
    /// made by the daemon whenever it answers there.
    #[arg(
        long,
        value_name = "PATH",
        env = "NONO_AGENT_DAEMON_SOCKET",
        default_value = crate::daemon::client::DEFAULT_SOCKET
    )]
    pub daemon_socket: PathBuf,

    /// Never use the daemon (load the programs directly as root, or use
    /// seccomp).
    #[arg(long)]
    pub no_daemon: bool,

    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl From<Enforcer> for Requested {
    fn from(e: Enforcer) -> Self {
        match e {
            Enforcer::Auto => Requested::Auto,
            Enforcer::Bpf => Requested::Bpf,
            Enforcer::Seccomp => Requested::Seccomp,
        }
    }
}

impl From<ExecArgs> for ExecRequest {
    fn from(a: ExecArgs) -> Self {
        Self {
            proxy_endpoints: a.proxy_endpoints,
            enforcer: a.enforcer.into(),
            events: a.events,
            allow_unenforced: a.allow_unenforced,
            profile: a.profile,
            read: a.read,
            write: a.write,
            exec: a.exec,
            loopback_ports: a.loopback_ports,
            allow_unix_sockets: a.allow_unix_sockets,
            user: a.user,
            allow_degraded: a.allow_degraded,
            quiet: a.quiet,
            daemon_socket: (!a.no_daemon).then_some(a.daemon_socket),
            proxy: a.proxy.into(),
            command: a.command,
            host: crate::config::HostConfig::default(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    /// Remove a stopped daemon's whole state instead: kill every sandbox in
    /// `<cgroup2>/NAME`, then remove its pins, cgroups and records (for
    /// uninstalling; refused while the daemon answers on its socket).
    #[arg(long, value_name = "NAME", value_parser = daemon_name)]
    pub daemon: Option<String>,
    /// The daemon's socket (to check that it is stopped).
    #[arg(long, value_name = "PATH", default_value = crate::daemon::client::DEFAULT_SOCKET)]
    pub daemon_socket: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Where to listen (ignored when systemd passes a socket).
    #[arg(long, value_name = "PATH", default_value = crate::daemon::client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Name of the daemon's parent cgroup (`<cgroup2>/NAME`), its pin
    /// directory (`<bpffs>/NAME`) and state directory
    /// (`/run/nono-agent/NAME`).
    #[arg(long, value_name = "NAME", default_value = "nono-daemon", value_parser = daemon_name)]
    pub name: String,
    /// Live sandboxes one uid may have.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_sandboxes_per_uid: usize,
    /// Connections one uid may hold open.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_connections_per_uid: usize,
    /// Requests per second one uid may make (bursts of twice that).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub max_requests_per_sec: u32,
    /// Proxy-endpoint and loopback-port entries one uid's sandboxes may
    /// hold in the shared maps together.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_entries_per_uid: usize,
    /// Testing aid: pretend to be another build (pins in another directory),
    /// to exercise the upgrade path with one binary.
    #[arg(long, hide = true, value_name = "SALT", value_parser = daemon_name)]
    pub build_salt: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this unix socket
    /// (root:root, `--metrics-socket-mode`); `none` to not serve them there.
    /// Default: `metrics.sock` beside `--socket`
    /// (`/run/nono-agent/metrics.sock`), so daemons side by side never share one.
    #[arg(long, value_name = "PATH")]
    pub metrics_socket: Option<PathBuf>,
    /// Mode of the metrics socket, octal. 0660 keeps the counts (sandboxes,
    /// denials per hook and reason; never destinations) to root; 0666
    /// lets every local user read them.
    #[arg(long, value_name = "OCTAL", default_value = "0660", value_parser = octal_mode)]
    pub metrics_socket_mode: u32,
    /// Also serve metrics on this loopback TCP address (e.g. 127.0.0.1:9464);
    /// other addresses are refused.
    #[arg(long, value_name = "ADDR:PORT", value_parser = loopback_addr)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How to log: `journald` (default under systemd), `json` (one object
    /// per line on stderr) or `text` (default otherwise).
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub log_format: Option<crate::daemon::log::LogFormat>,
}

/// A file mode in octal, at most 0777.
fn octal_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal file mode (e.g. 0660)")),
    }
}

/// A loopback socket address.
fn loopback_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let a: std::net::SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an address:port (e.g. 127.0.0.1:9464)"))?;
    crate::daemon::metrics::check_listen(a).map_err(|e| e.to_string())
}

/// A daemon name is one path component of letters, digits, `-`, `_`, `.`.
fn daemon_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok && s != crate::sandbox::cgroup::PARENT {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a daemon name (letters, digits, '-', '_', '.'; not {:?})",
            crate::sandbox::cgroup::PARENT
        ))
    }
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// The daemon socket to ask (as `exec` would).
    #[arg(
        long,
        value_name = "PATH",
        env = "NONO_AGENT_DAEMON_SOCKET",
        default_value = crate::daemon::client::DEFAULT_SOCKET
    )]
    pub daemon_socket: PathBuf,
}
