//! Command-line interface.

use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Run a command with its network confined to loopback and its proxy.
#[derive(Debug, Parser)]
#[command(name = "nono-agent", version, about)]
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
    Cleanup,
    /// Report what this host supports and which enforcer `auto` would pick.
    Doctor(DoctorArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Enforcer {
    /// The best enforcer that can be applied here (today: bpf).
    Auto,
    /// cgroup sock_addr BPF programs (needs root or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN).
    Bpf,
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

    /// Do not print the summary line at exit.
    #[arg(long, short)]
    pub quiet: bool,

    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}
