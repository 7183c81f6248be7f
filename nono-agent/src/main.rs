//! nono-agent: runs a process tree with its network confined, in the kernel,
//! to loopback and its proxy. The binary only parses the command line and
//! turns the outcome into an exit code; everything else is the library.

use clap::Parser as _;
use nono_agent::{cli, commands};

fn main() {
    let cli = cli::Cli::parse();
    // Many tunnels need many descriptors; the child gets the original soft
    // limit back before exec (see sandbox::spawn).
    nono_agent::sandbox::spawn::raise_nofile_limit();
    // Sandboxed processes run with our uid when we are not root: without
    // this, they could ptrace us or take our descriptors (the seccomp
    // listener!) with pidfd_getfd. The child makes itself dumpable again.
    // SAFETY: integer-only prctl.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nono-agent: error: {e:#}");
            commands::EXIT_AGENT_ERROR
        }
    };
    std::process::exit(code);
}
