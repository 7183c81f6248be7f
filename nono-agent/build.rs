//! Builds the BPF object (nightly, `-Z build-std=core`, bpf-linker) and leaves
//! it in `OUT_DIR/nono`, where `src/bpf/loader.rs` embeds it; and sets
//! `NONO_AGENT_GIT_COMMIT` for `--version`.
use anyhow::{anyhow, Context as _};
use std::path::Path;
use std::process::Command;

fn main() -> anyhow::Result<()> {
    git_commit();
    let meta = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("nono-agent has no parent directory"))?
        .join("nono-ebpf");
    let root = meta
        .to_str()
        .ok_or_else(|| anyhow!("workspace path is not UTF-8"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "nono-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the BPF programs failed: run scripts/setup (needs rust nightly with rust-src and bpf-linker)")
}

/// `NONO_AGENT_GIT_COMMIT`: the commit being built (12 hex digits), or `unknown` without git or outside
/// a checkout (a source tarball). A build that sets `NONO_AGENT_GIT_COMMIT`
/// itself (a distribution's packaging) wins.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=NONO_AGENT_GIT_COMMIT");
    if let Ok(v) = std::env::var("NONO_AGENT_GIT_COMMIT") {
        println!("cargo:rustc-env=NONO_AGENT_GIT_COMMIT={v}");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()?;
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    };
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => {
            // Rebuild the string when HEAD moves: HEAD itself (checkout),
            // the reflog of HEAD (every commit, also in a worktree) and
            // packed refs.
            for p in ["HEAD", "logs/HEAD", "packed-refs"] {
                if let Some(path) = git(&["rev-parse", "--git-path", p]) {
                    let path = dir.join(path);
                    if path.exists() {
                        println!("cargo:rerun-if-changed={}", path.display());
                    }
                }
            }
            c
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=NONO_AGENT_GIT_COMMIT={commit}");
}
