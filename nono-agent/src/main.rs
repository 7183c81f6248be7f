//! nono-agent: runs a process tree with its network confined, in the kernel,
//! to loopback and its proxy. The binary only parses the command line and
//! turns the outcome into an exit code; everything else is the library.

use nono_agent::{cli, commands};

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    nono_agent::timing::mark_process_start();
    let cli = match cli::Cli::parse_from_args(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; every other
            // parse error is nono-agent's own failure: 125, as the README's
            // exit-code table says (clap's default is 2, which a command
            // run under exec could also return).
            let code = cli::usage_exit_code(e.kind());
            let _ = e.print();
            if code != 0 {
                let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
                if let Some(hint) = cli::usage_hint(&args) {
                    eprintln!("\n{hint}");
                }
            }
            std::process::exit(code);
        }
    };
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
    nono_agent::timing::report_exit();
    std::process::exit(code);
}
