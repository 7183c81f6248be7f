//! nono-agent: runs a process tree with its network confined, in the kernel,
//! to loopback and its proxy.

mod bpf;
mod cli;
mod doctor;
mod events;
mod exec;
mod mountinfo;
mod sandbox;
mod signals;

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
    match cli.command {
        cli::Command::Exec(args) => {
            // One thread is plenty: the agent only waits on the child, the
            // ring buffer and signals; a single-threaded runtime also keeps
            // fork() in `spawn` away from other running threads.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(exec::run(args))
        }
        cli::Command::Cleanup => {
            let swept = sandbox::sweep::sweep()?;
            for id in &swept.removed {
                println!("removed stale sandbox {id}");
            }
            for e in &swept.errors {
                eprintln!("nono-agent: {e}");
            }
            if swept.removed.is_empty() && swept.errors.is_empty() {
                println!("no stale sandboxes");
            }
            Ok(if swept.errors.is_empty() { 0 } else { 1 })
        }
        cli::Command::Doctor(args) => doctor::run(args.json),
    }
}
