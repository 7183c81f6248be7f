//! Builds the BPF object (nightly, `-Z build-std=core`, bpf-linker) and leaves
//! it in `OUT_DIR/nono`, where `src/bpf/loader.rs` embeds it.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
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
