//! One module per subcommand. Commands use the library's modules and never
//! each other; `anyhow` is used here and in `main` only, at the edge where
//! errors become a message and an exit code.

pub mod cleanup;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod dry_run;
pub mod exec;
pub mod learn;
pub mod profile;
pub mod proxy;
pub mod selftest;
pub mod why;

use anyhow::Result;

use crate::cli::{Cli, Command};

/// Exit code for the agent's own failures (as `env` and `timeout` use it).
pub const EXIT_AGENT_ERROR: i32 = 125;

/// Runs one command line; returns the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Exec(args) => exec::run(args.into()),
        Command::Learn(args) => runtime()?.block_on(learn::run(args)),
        Command::Cleanup(args) => cleanup::run(args),
        Command::Doctor(args) => doctor::run(args.json, &args.daemon_socket),
        Command::Daemon(args) => runtime()?.block_on(daemon::run(args)),
        Command::Profile(cmd) => profile::run(cmd),
        Command::Config(cmd) => config::run(cmd),
        Command::Proxy(args) => runtime()?.block_on(proxy::run(args)),
        Command::Why(args) => why::run(args),
        Command::Completions { shell } => completions(shell),
        Command::Selftest(args) => selftest::run(args),
        Command::Probe { plan } => selftest::probe(&plan),
    }
}

/// `completions SHELL`: the script clap_complete generates from the same
/// command definition the parser uses, so it never drifts from the flags.
fn completions(shell: crate::cli::Shell) -> Result<i32> {
    use clap::CommandFactory as _;
    use clap_complete::Shell as S;
    let shell = match shell {
        crate::cli::Shell::Bash => S::Bash,
        crate::cli::Shell::Zsh => S::Zsh,
        crate::cli::Shell::Fish => S::Fish,
    };
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "nono-agent", &mut out);
    std::io::Write::flush(&mut out)?;
    Ok(0)
}

/// Two workers: the proxy may carry bulk traffic while the main task waits
/// on the child and the ring buffer. The child is started with clone3 and
/// only makes raw syscalls before exec, so other running threads are no
/// hazard.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
