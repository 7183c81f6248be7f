//! `cargo xtask <task>`: developer tasks that are not plain cargo commands.
//!
//! - `build-ebpf`: build the BPF object (nightly, build-std=core, bpf-linker)
//!   into `target/bpfel-unknown-none/release/nono`. Building `nono-agent`
//!   does the same through `aya-build`; this task is for working on the
//!   programs alone (and for checking the toolchain).
//! - `bench`: start-up and per-connect overhead of the sandbox, side by side
//!   with running the same thing unsandboxed, in one run; then the daemon
//!   (`bench --only daemon` or `bench-daemon` for that part alone).
//! - `bench-pty`: keystroke echo round trip through the agent's
//!   pseudo-terminal relay vs `cat` on a terminal directly.
//! - `bench-transparent`: HTTPS requests/s and latency in transparent mode
//!   vs explicit proxy mode vs direct, a server-first protocol's time to
//!   its banner, DNS answers/s from the agent's resolver.
//! - `bench-creds`: requests per second and added latency through the
//!   proxy for a credential host (intercepted) vs a plain tunnel.
//! - `man`: man pages from the CLI definition into `target/man`.
//! - `dist`: the static, stripped x86_64 musl binary in `target/dist`.
//! - `deb`: `dist` and `man`, packaged as `target/dist/nono-agent_<v>_amd64.deb`.

mod bench;
mod bench_creds;
mod bench_daemon;
mod bench_proxy;
mod bench_pty;
mod bench_transparent;
mod dist;

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build-ebpf") => build_ebpf(),
        Some("bench") => bench::run(&workspace_root(), &args[1..]),
        Some("bench-daemon") => {
            let mut a = vec!["--only".to_string(), "daemon".to_string()];
            a.extend_from_slice(&args[1..]);
            bench::run(&workspace_root(), &a)
        }
        Some("bench-proxy") => bench_proxy::run(&workspace_root(), &args[1..]),
        Some("bench-pty") => bench_pty::run(&workspace_root(), &args[1..]),
        Some("bench-transparent") => bench_transparent::run(&workspace_root(), &args[1..]),
        Some("bench-creds") => bench_creds::run(&args[1..]),
        Some("man") => dist::man().map(drop),
        Some("dist") => dist::dist().map(drop),
        Some("deb") => dist::deb().map(drop),
        // Internal: the workload `bench` runs inside and outside a sandbox.
        Some("connect-loop") => bench::connect_loop(&args[1..]),
        // Internal: the workloads `bench-transparent` runs inside a sandbox.
        Some("dns-load") => bench_transparent::load::dns_load(&args[1..]),
        Some("banner-loop") => bench_transparent::load::banner_loop(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <build-ebpf | bench [--iterations N] [--runs N] [--only daemon] | bench-daemon | bench-proxy [--help] | bench-creds [--requests N] [--connections N] [--rounds N] | bench-pty [--keystrokes N] [--agent PATH] | bench-transparent [--help] | man | dist | deb>"
            );
            std::process::exit(2);
        }
    }
}

/// The workspace root (xtask lives one level below it).
/// Builds nono-agent and xtask with optimisations and, when this xtask is
/// a debug build (`cargo xtask` builds it so), runs `command args
/// --skip-build` in the release xtask instead of returning: the benchmarks'
/// origins and clients live in this binary and are measured optimised.
pub(crate) fn release_build_and_reexec(root: &Path, command: &str, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "nono-agent", "-p", "xtask"])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("release build of nono-agent and xtask failed");
    }
    if cfg!(debug_assertions) {
        let err = Command::new(root.join("target/release/xtask"))
            .arg(command)
            .args(args)
            .arg("--skip-build")
            .exec();
        bail!("running the release build of xtask: {err}");
    }
    Ok(())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn build_ebpf() -> Result<()> {
    let root = workspace_root();
    // Same flags as aya-build uses from nono-agent's build.rs, so both paths
    // produce the same object.
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let status = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "nono-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(&root)
        .status()
        .context("running cargo +nightly (is rustup installed? run scripts/setup)")?;
    if !status.success() {
        bail!("building the BPF programs failed ({status}); scripts/setup installs rust-src and bpf-linker");
    }
    let obj = root.join("target/bpfel-unknown-none/release/nono");
    println!("{}", obj.display());
    Ok(())
}
