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

impl Cli {
    /// Parses `args` (the program name first) as [`Cli::try_parse_from`]
    /// does, building only the `exec` subcommand's definition when that is
    /// the subcommand: the derived definition of every subcommand costs
    /// more start-up time than anything else in argument parsing (its
    /// allocations alone touch ~40 pages, a page fault each). Any error,
    /// `--help` included, is left to the full definition, so messages and
    /// exit codes are the same either way (`cli::tests::exec_fast_path_*`).
    pub fn parse_from_args(args: Vec<OsString>) -> Result<Self, clap::Error> {
        use clap::{Args as _, FromArgMatches as _};
        if args.get(1).is_some_and(|a| a == "exec") {
            let exec = ExecArgs::augment_args(clap::Command::new("exec"));
            let fast = clap::Command::new("nono-agent")
                .version(VERSION)
                .subcommand_required(true)
                .subcommand(exec)
                .try_get_matches_from(&args);
            if let Ok(parsed) = fast.and_then(|m| Self::from_arg_matches(&m)) {
                return Ok(parsed);
            }
        }
        Self::try_parse_from(args)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD in a new sandbox: it may connect to 127.0.0.1 / ::1 on any
    /// port and to the proxy endpoints, nothing else.
    Exec(ExecArgs),
    /// Run CMD once in audit mode (as `exec --audit`, same options) and
    /// write a profile that extends the base (`--profile`, default
    /// `default`) with what CMD needed.
    Learn(LearnArgs),
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
    /// Say whether a sandbox would let DEST (or `--path P`) through, and
    /// which rule decides: exit 0 allowed, 1 denied, 2 usage error.
    Why(WhyArgs),
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
    /// Check a profile as `exec` would (syntax, values, write rules, user);
    /// exit non-zero with the error if it is invalid.
    Validate {
        /// Profile NAME or PATH, looked up as `exec --profile` does (a PATH
        /// contains `/` or ends in `.toml`).
        #[arg(value_name = "NAME|PATH", value_hint = clap::ValueHint::AnyPath)]
        file: String,
    },
}

/// What the filtering proxy lets through.
#[derive(Debug, Clone, clap::Args, Default)]
pub struct ProxyArgs {
    /// Allow this host through the proxy: `example.com` (exactly), or
    /// `*.example.com` (any subdomain, not the apex); `:PORT` to allow that
    /// port instead of 80 and 443. Giving any proxy option starts the proxy.
    #[arg(long = "allow-domain", value_name = "PATTERN", value_parser = allow_domain)]
    pub allow_domain: Vec<DomainRule>,

    /// Refuse this host even if an --allow-domain matches (checked first).
    #[arg(long = "deny-domain", value_name = "PATTERN")]
    pub deny_domain: Vec<DomainRule>,

    /// Allow IP literals and resolved addresses in this network, on PORT or
    /// any port: `10.0.0.0/8:5432`, `[2001:db8::/32]:443`. Needed for
    /// loopback, private, CGNAT and ULA addresses; link-local and metadata
    /// addresses can never be allowed.
    #[arg(long = "allow-cidr", value_name = "NET[:PORT]", value_parser = allow_cidr)]
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
    #[arg(long = "proxy-max-connections", default_value_t = 4096, value_parser = at_least_one)]
    pub max_connections: usize,

    /// Seconds without traffic after which a tunnel is closed.
    #[arg(long = "proxy-idle-timeout", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,

    /// Seconds allowed for connecting to a destination.
    #[arg(long = "proxy-connect-timeout", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout: u64,
}

/// `--allow-domain`: a pattern, refused over a public suffix (`*.com`).
fn allow_domain(s: &str) -> Result<DomainRule, String> {
    nono_proxy::parse_allow(s).map_err(|e| e.to_string())
}

/// `--allow-cidr`: a network without host bits, refused over link-local
/// and metadata addresses (no rule can open those).
fn allow_cidr(s: &str) -> Result<CidrRule, String> {
    nono_proxy::parse_allow_cidr(s).map_err(|e| e.to_string())
}

/// A count of at least 1 (0 connections would refuse every request).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?} is not a number: {e}")),
    }
}

/// A loopback port, 1 to 65535 (the same rule as a profile's `loopback`).
fn loopback_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err("0 is not a port (1 to 65535)".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{s:?} is not a port (1 to 65535)")),
    }
}

/// `proxy --secret`: not empty (an empty secret is a password anyone knows).
fn secret(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("the secret is empty (give one, or leave --secret out on a loopback listener)".into())
    } else {
        Ok(s.to_string())
    }
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
            audit: false,
            credentials: Vec::new(),
            upstream_ca: Vec::new(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct StandaloneProxyArgs {
    /// Address to listen on (repeatable), e.g. 127.0.0.1:3128.
    #[arg(long, required = true, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,

    /// Require `Proxy-Authorization: Basic nono:SECRET` (required when
    /// listening on anything but loopback; never empty). Prefer the
    /// environment variable: a command line is readable by every local
    /// user (`ps`), an environment only by the same user and root.
    #[arg(
        long,
        value_name = "SECRET",
        value_parser = secret,
        env = "NONO_PROXY_SECRET",
        hide_env_values = true
    )]
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

/// What the sandbox may reach directly (the kernel policy's own flags),
/// one declaration for `exec` and `why` so both parse them alike.
#[derive(Debug, clap::Args)]
pub struct DirectArgs {
    /// An address the sandbox may connect to besides loopback, e.g. its
    /// proxy: `198.51.100.2:3128` or `[2001:db8::1]:8080`. Up to 16.
    #[arg(long = "proxy-endpoint", value_name = "ADDR:PORT")]
    pub proxy_endpoints: Vec<SocketAddr>,

    /// Narrow loopback to these ports (plus the proxy); repeatable. Without
    /// it (and without a profile saying otherwise) every loopback port is
    /// reachable.
    #[arg(long = "loopback-port", value_name = "PORT", value_parser = loopback_port)]
    pub loopback_ports: Vec<u16>,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub direct: DirectArgs,

    /// Which enforcer to use.
    #[arg(long, value_enum, default_value_t = Enforcer::Auto)]
    pub enforcer: Enforcer,

    /// Append every event as a JSON line to PATH (not the command's own
    /// stdout or stderr: `-` is refused, the command could forge lines).
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

    /// Allow connecting to this daemon socket (docker.sock, the system bus
    /// ... are refused otherwise).
    #[arg(long = "allow-unix-socket", value_name = "PATH")]
    pub allow_unix_sockets: Vec<PathBuf>,

    /// Run the command as this user (name or uid); needs root. HOME, USER
    /// and LOGNAME are set from the user's passwd entry (a uid without one:
    /// HOME=/, USER and LOGNAME the uid).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Run even if the kernel cannot enforce everything the profile asks of
    /// Landlock (what is not enforced is printed).
    #[arg(long)]
    pub allow_degraded: bool,

    /// Do not print the enforcer and filesystem lines, the summary at exit
    /// or denial notices.
    #[arg(long, short)]
    pub quiet: bool,

    /// A one-line notice on stderr for each new denied destination while
    /// the command runs: `auto` (default) when stderr is a terminal and
    /// `-q` is not given, `always`, `never`.
    #[arg(long, value_enum, default_value_t = Notices::Auto)]
    pub notices: Notices,

    /// Print the resolved plan (enforcer, policy, proxy rules, filesystem
    /// rules, host protection) and exit 0, creating nothing and running
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: the plan as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,

    /// Audit mode: refuse nothing new; every connection, send or proxy
    /// request the policy would refuse goes ahead and is recorded as a
    /// `would-deny` event naming the rule. Cloud metadata, link-local and
    /// other addresses no rule opens, and the host protection, stay refused.
    /// The profile's filesystem rules are not applied.
    #[arg(long)]
    pub audit: bool,

    /// Transparent mode: TCP connections the policy refuses go to the
    /// sandbox's proxy instead (it decides by the name: TLS SNI, HTTP Host,
    /// or the name behind an address its resolver handed out), and DNS
    /// (port 53, UDP and TCP, to any address) to the agent's resolver, which
    /// answers only for allowed names. For programs that ignore
    /// HTTPS_PROXY. Other UDP stays refused.
    #[arg(long)]
    pub transparent: bool,

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

    /// Inject a credential: requests to HOST (port 443, or PORT) get the
    /// real value in HEADER, read by nono-agent from its environment
    /// variable NAME (or the file PATH); the sandbox only holds a random
    /// placeholder (in NAME, for env:). The proxy intercepts TLS to HOST
    /// only, with a CA made for this sandbox. Options after the source:
    /// `;format=Bearer {}` (how the value is written), `;env=VAR` (the
    /// sandbox's placeholder variable; `;env=` for none). Repeatable.
    #[arg(
        long = "credential",
        value_name = "HOST[:PORT]:HEADER=env:NAME|file:PATH"
    )]
    pub credentials: Vec<nono_proxy::mitm::CredentialSpec>,

    /// Trust the certificates in FILE (PEM) besides the system's when the
    /// proxy connects to a credential host (an enterprise CA).
    #[arg(long = "upstream-ca", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// The exit code for a command line clap refused: 0 for `--help` and
/// `--version` (what was asked for was printed), else 125, nono-agent's own
/// failure (see `commands::EXIT_AGENT_ERROR`).
pub fn usage_exit_code(kind: clap::error::ErrorKind) -> i32 {
    use clap::error::ErrorKind as K;
    match kind {
        K::DisplayHelp | K::DisplayVersion => 0,
        _ => crate::commands::EXIT_AGENT_ERROR,
    }
}

/// A hint for a refused `exec` command line without `--`: clap then reads
/// the command's own arguments (`sh -c ...`, `ls -l`) as nono-agent's.
pub fn usage_hint(args: &[OsString]) -> Option<String> {
    let rest = args.get(1..)?;
    let exec_at = rest.iter().position(|a| a == "exec")?;
    let after = &rest[exec_at + 1..];
    if after.iter().any(|a| a == "--") {
        return None;
    }
    // The first word that is neither an option nor an option's value is
    // most likely the command (which options take a value: from the same
    // definition the parser uses).
    use clap::CommandFactory as _;
    let cli = Cli::command();
    let exec = cli.find_subcommand("exec")?;
    let takes_value = |word: &str| {
        exec.get_arguments().any(|a| {
            let named = match word.strip_prefix("--") {
                Some(long) => a.get_long() == Some(long),
                None => word
                    .strip_prefix('-')
                    .and_then(|s| s.chars().last())
                    .is_some_and(|c| a.get_short() == Some(c)),
            };
            named && a.get_action().takes_values()
        })
    };
    let mut words = after.iter().map(|a| a.to_string_lossy());
    let mut cmd = String::from("CMD");
    while let Some(w) = words.next() {
        if !w.starts_with('-') {
            cmd = w.into_owned();
            break;
        }
        if !w.contains('=') && takes_value(&w) {
            words.next();
        }
    }
    Some(format!(
        "hint: put the command after `--`, so that its own options are not read as nono-agent's: \
         nono-agent exec [OPTIONS] -- {cmd} [ARGS...]"
    ))
}

/// When denial notices are printed (`exec --notices`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Notices {
    /// When stderr is a terminal and `-q` is not given.
    #[default]
    Auto,
    /// Always (even with `-q`, even when stderr is not a terminal).
    Always,
    /// Never.
    Never,
}

/// `why DEST` / `why --path P [--write|--exec]`, with exec's policy flags.
#[derive(Debug, clap::Args)]
pub struct WhyArgs {
    /// `HOST:PORT` (port 443 if omitted), `ADDR:PORT` or `[V6ADDR]:PORT`.
    #[arg(
        value_name = "DEST",
        required_unless_present = "path",
        conflicts_with = "path"
    )]
    pub dest: Option<crate::why::NetDest>,

    /// Ask about a UDP send rather than a TCP connect.
    #[arg(long, conflicts_with = "path")]
    pub udp: bool,

    /// Ask about this path instead: read access, or `--write` / `--exec`.
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,

    /// Alone: ask about reading the path (the default). `--read=PATH`
    /// adds a read rule, as exec's `--read PATH` does.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "", value_name = "PATH")]
    pub read: Vec<OsString>,

    /// Alone: ask about writing the path. `--write=PATH` adds a write rule.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "", value_name = "PATH")]
    pub write: Vec<OsString>,

    /// Alone: ask about executing the path. `--exec=PATH` adds an exec rule.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "", value_name = "PATH")]
    pub exec: Vec<OsString>,

    /// The answer as JSON.
    #[arg(long)]
    pub json: bool,

    /// The profile to judge against (NAME or PATH), as `exec --profile`.
    #[arg(long, value_name = "NAME|PATH")]
    pub profile: Option<String>,

    #[command(flatten)]
    pub direct: DirectArgs,

    #[command(flatten)]
    pub proxy: ProxyArgs,
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
            proxy_endpoints: a.direct.proxy_endpoints,
            enforcer: a.enforcer.into(),
            events: a.events,
            allow_unenforced: a.allow_unenforced,
            profile: a.profile,
            read: a.read,
            write: a.write,
            exec: a.exec,
            loopback_ports: a.direct.loopback_ports,
            allow_unix_sockets: a.allow_unix_sockets,
            user: a.user,
            allow_degraded: a.allow_degraded,
            quiet: a.quiet,
            notices: a.notices,
            dry_run: a.dry_run.then_some(if a.json {
                crate::plan::DryRun::Json
            } else {
                crate::plan::DryRun::Text
            }),
            audit: a.audit,
            transparent: a.transparent,
            daemon_socket: (!a.no_daemon).then_some(a.daemon_socket),
            proxy: a.proxy.into(),
            credentials: a.credentials,
            skip_credential_values: false,
            upstream_ca: a.upstream_ca,
            command: a.command,
            host: crate::config::HostConfig::default(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct LearnArgs {
    /// Where to write the learned profile (TOML).
    #[arg(short = 'o', long = "output", value_name = "FILE", required = true)]
    pub output: PathBuf,

    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,

    /// Every `exec` option; `--profile` names the base the learned profile
    /// extends (default: `default`). `--audit` is implied.
    #[command(flatten)]
    pub exec: ExecArgs,
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
    /// Sandboxes per second one uid may start (bursts of twice that): a
    /// connection's first request is counted, and its requests past one
    /// `exec`'s exchange (seven).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn usage_errors_exit_125_help_and_version_0() {
        use clap::error::ErrorKind as K;
        assert_eq!(usage_exit_code(K::DisplayHelp), 0);
        assert_eq!(usage_exit_code(K::DisplayVersion), 0);
        for k in [
            K::UnknownArgument,
            K::MissingRequiredArgument,
            K::InvalidValue,
            K::ValueValidation,
            K::MissingSubcommand,
            K::DisplayHelpOnMissingArgumentOrSubcommand,
        ] {
            assert_eq!(usage_exit_code(k), 125, "{k:?}");
        }
    }

    #[test]
    fn exec_without_double_dash_gets_a_hint() {
        let h = usage_hint(&os(&["nono-agent", "exec", "-q", "sh", "-c", "echo hi"])).unwrap();
        assert!(
            h.contains("nono-agent exec [OPTIONS] -- sh [ARGS...]"),
            "{h}"
        );
        // An option's value is not taken for the command.
        let h = usage_hint(&os(&[
            "nono-agent",
            "exec",
            "--profile",
            "default",
            "--read=/x",
            "--write",
            "/y",
            "python3",
            "-c",
        ]))
        .unwrap();
        assert!(h.contains("-- python3 [ARGS...]"), "{h}");
        assert!(usage_hint(&os(&["nono-agent", "exec", "--bogus", "--", "sh"])).is_none());
        assert!(usage_hint(&os(&["nono-agent", "doctor", "--bogus"])).is_none());
    }

    #[test]
    fn value_checks() {
        assert!(loopback_port("0").is_err());
        assert_eq!(loopback_port("5432"), Ok(5432));
        assert!(at_least_one("0").is_err());
        assert_eq!(at_least_one("7"), Ok(7));
        assert!(secret("").is_err());
        assert!(allow_domain("*.com").is_err());
        assert!(allow_domain("*.co.uk").is_err());
        assert!(allow_domain("*.example.com").is_ok());
        assert!(allow_cidr("169.254.0.0/16").is_err());
        let e = allow_cidr("10.0.0.1/8").unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
        assert!(allow_cidr("10.0.0.0/8").is_ok());
    }

    #[test]
    fn exec_fast_path_parses_as_the_full_definition() {
        let cases: &[&[&str]] = &[
            &["nono-agent", "exec", "--", "true"],
            &[
                "nono-agent",
                "exec",
                "-q",
                "--daemon-socket",
                "/x.sock",
                "--",
                "sh",
                "-c",
                "x",
            ],
            &[
                "nono-agent",
                "exec",
                "--enforcer",
                "seccomp",
                "--allow-domain",
                "example.com",
                "--",
                "curl",
                "-v",
            ],
            &[
                "nono-agent",
                "exec",
                "--profile",
                "default",
                "--read=/x",
                "--write",
                "/y",
                "--",
                "ls",
                "--",
                "-q",
            ],
            &[
                "nono-agent",
                "exec",
                "--loopback-port",
                "5432",
                "--allow-cidr",
                "10.0.0.0/8",
                "--",
                "true",
            ],
            &["nono-agent", "exec", "--dry-run", "--", "true"],
            // Errors and help: the fast path must give them up to the full one.
            &["nono-agent", "exec", "--bogus", "--", "true"],
            &["nono-agent", "exec", "--loopback-port", "0", "--", "true"],
            &["nono-agent", "exec", "--help"],
            &["nono-agent", "exec", "-h"],
            &["nono-agent", "exec", "--version"],
            &["nono-agent", "exec"],
            &["nono-agent", "exec", "sh", "-c", "echo hi"],
            &["nono-agent", "exec", "--enforcer", "nope", "--", "true"],
            &[
                "nono-agent",
                "exec",
                "--allow-domain",
                "*.com",
                "--",
                "true",
            ],
            &["nono-agent", "doctor"],
            &["nono-agent", "--version"],
            &["nono-agent"],
        ];
        for case in cases {
            let fast = Cli::parse_from_args(os(case));
            let full = Cli::try_parse_from(os(case));
            match (fast, full) {
                (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{case:?}"),
                (Err(a), Err(b)) => {
                    assert_eq!(a.kind(), b.kind(), "{case:?}");
                    assert_eq!(a.render().to_string(), b.render().to_string(), "{case:?}");
                }
                (a, b) => panic!("{case:?}: fast {a:?}, full {b:?}"),
            }
        }
    }

    #[test]
    fn the_parser_refuses_what_a_profile_refuses() {
        let parse = |v: &[&str]| Cli::try_parse_from(os(v));
        for bad in [
            &["nono-agent", "exec", "--loopback-port", "0", "--", "true"][..],
            // `why` judges with exec's own flags, parsed alike.
            &["nono-agent", "why", "127.0.0.1:80", "--loopback-port", "0"],
            &[
                "nono-agent",
                "exec",
                "--proxy-max-connections",
                "0",
                "--",
                "true",
            ],
            &[
                "nono-agent",
                "exec",
                "--proxy-idle-timeout",
                "0",
                "--",
                "true",
            ],
            &[
                "nono-agent",
                "exec",
                "--allow-domain",
                "*.com",
                "--",
                "true",
            ],
            &[
                "nono-agent",
                "exec",
                "--allow-cidr",
                "169.254.0.0/16",
                "--",
                "true",
            ],
            &[
                "nono-agent",
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--secret",
                "",
            ],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(usage_exit_code(e.kind()), 125, "{bad:?}");
        }
        assert!(parse(&["nono-agent", "exec", "--deny-domain", "*.com", "--", "true"]).is_ok());
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
