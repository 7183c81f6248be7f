//! nono-agent: runs a process tree with its network confined, in the kernel,
//! to loopback and its proxy.

mod bpf;
mod cli;
mod doctor;
mod events;
mod exec;
mod mountinfo;
mod plan;
mod profile;
mod profile_cmd;
mod proxy_cmd;
mod proxy_config;
mod sandbox;
mod seccomp;
mod signals;
mod util;

use clap::Parser as _;

fn main() {
    let cli = cli::Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nono-agent: error: {e:#}");
            exec::EXIT_AGENT_ERROR
        }
    };
    std::process::exit(code);
}

fn run(cli: cli::Cli) -> anyhow::Result<i32> {
    // Many tunnels need many descriptors; the child gets the original soft
    // limit back before exec (see sandbox::spawn).
    sandbox::spawn::raise_nofile_limit();
    // Sandboxed processes run with our uid when we are not root: without
    // this, they could ptrace us or take our descriptors (the seccomp
    // listener!) with pidfd_getfd. The child makes itself dumpable again.
    // SAFETY: integer-only prctl.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    match cli.command {
        cli::Command::Exec(args) => {
            // One thread is plenty: the agent only waits on the child, the
            // ring buffer and signals; a single-threaded runtime also keeps
            // fork() in `spawn` away from other running threads.
            // Two workers: the proxy may carry bulk traffic while the main
            // task waits on the child and the ring buffer. The child is
            // started with clone3 and only makes raw syscalls before exec,
            // so other running threads are no hazard.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(exec::run(args))
        }
        cli::Command::Cleanup => {
            let swept = sandbox::sweep::sweep(std::time::Duration::from_secs(2))?;
            for id in &swept.removed {
                println!("removed stale sandbox {id}");
            }
            for id in &swept.pending {
                println!(
                    "sandbox {id}: processes gone, but a socket it made still exists out of \
                     reach (another network namespace or a descriptor held elsewhere); its \
                     programs stay attached to judge it until it closes: run cleanup again later"
                );
            }
            for e in &swept.errors {
                eprintln!("nono-agent: {e}");
            }
            if swept.removed.is_empty() && swept.errors.is_empty() && swept.pending.is_empty() {
                println!("no stale sandboxes");
            }
            Ok(if swept.errors.is_empty() { 0 } else { 1 })
        }
        cli::Command::Doctor(args) => doctor::run(args.json),
        cli::Command::Profile(cmd) => profile_cmd::run(cmd),
        cli::Command::Proxy(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(proxy_cmd::run(args))
        }
    }
}
