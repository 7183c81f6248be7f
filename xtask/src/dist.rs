//! Release artifacts: `man` (clap_mangen pages), `dist` (the static musl
//! binary, stripped, with its SHA-256) and `deb` (a Debian package built
//! with `dpkg-deb` from a staged tree).
//!
//! Why `dpkg-deb` and not cargo-deb: the package holds generated files (man
//! pages, completions made by running the static binary) and the binary of
//! `dist`, not a plain `cargo build` output, and it needs hand-written
//! maintainer scripts anyway; staging the tree is a few dozen lines, and
//! `dpkg-deb` is on every Debian machine, so neither CI nor scripts/setup
//! has to build another tool (cargo-deb takes minutes to compile on 2 cores).

use anyhow::{bail, Context as _, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::workspace_root;

pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// The package's name, also the binary's.
const NAME: &str = "nono-agent";

/// `target/man`: `nono-agent.1` and `nono-agent-<subcommand>.1`.
pub fn man() -> Result<Vec<PathBuf>> {
    use clap::CommandFactory as _;
    let dir = workspace_root().join("target/man");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let cmd = nono_agent::cli::Cli::command();
    let mut pages = Vec::new();
    let mut write = |name: &str, cmd: clap::Command| -> Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .with_context(|| format!("render the man page of {name}"))?;
        let path = dir.join(format!("{name}.1"));
        fs::write(&path, buf).with_context(|| format!("write {}", path.display()))?;
        pages.push(path);
        Ok(())
    };
    write(NAME, cmd.clone())?;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let name = format!("{NAME}-{}", sub.get_name());
        // A subcommand's page shows its full name and the program's version.
        let page = sub
            .clone()
            // clap's names are &'static str (no "string" feature); xtask
            // runs once, so leaking a few names is fine.
            .name(&*Box::leak(name.clone().into_boxed_str()))
            .bin_name(format!("{NAME} {}", sub.get_name()))
            .version(nono_agent::cli::VERSION);
        write(&name, page)?;
    }
    for p in &pages {
        println!("{}", p.display());
    }
    Ok(pages)
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// True if the ELF file has a PT_INTERP header (needs a dynamic loader).
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    // 64-bit little-endian ELF only (x86_64).
    if elf.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("truncated ELF header");
    };
    for i in 0..usize::from(phnum) {
        let off = phoff as usize + i * usize::from(phentsize);
        const PT_INTERP: u32 = 3;
        if u32_at(off).context("truncated program header")? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `target/dist/nono-agent` (+ `.sha256`): built for x86_64 musl, static,
/// the BPF object embedded (nono-agent's build.rs), stripped.
pub fn dist() -> Result<PathBuf> {
    let root = workspace_root();
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is needed (run scripts/setup)")?;
    if !String::from_utf8_lossy(&installed)
        .lines()
        .any(|l| l.trim() == MUSL)
    {
        bail!(
            "the Rust target {MUSL} is not installed: run scripts/setup (rustup target add {MUSL})"
        );
    }
    let t = Instant::now();
    // ring (rustls) compiles C and assembly: cc-rs finds musl-gcc (Debian
    // musl-tools, installed by scripts/setup).
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--target", MUSL])
        .args(["--package", NAME, "--bin", NAME])
        .current_dir(&root))?;
    eprintln!("dist: cargo build took {:.1?}", t.elapsed());
    let built = root.join("target").join(MUSL).join("release").join(NAME);
    let dir = root.join("target/dist");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let out = dir.join(NAME);
    let tmp = dir.join(format!(".{NAME}.tmp"));
    fs::copy(&built, &tmp)
        .with_context(|| format!("copy {} to {}", built.display(), tmp.display()))?;
    run(Command::new("strip").arg("--strip-all").arg(&tmp)).context("strip (binutils)")?;
    let bytes = fs::read(&tmp)?;
    if has_interpreter(&bytes)? {
        bail!("{} is dynamically linked (has PT_INTERP)", built.display());
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, &out)?;
    let sum = output(Command::new("sha256sum").arg(NAME).current_dir(&dir))?;
    let sum_path = dir.join(format!("{NAME}.sha256"));
    fs::write(&sum_path, &sum)?;
    let version = output(Command::new(&out).arg("--version"))?;
    println!("{}", out.display());
    println!("{}", sum_path.display());
    println!(
        "{} bytes ({:.1} MiB), static, stripped: {}",
        bytes.len(),
        bytes.len() as f64 / (1024.0 * 1024.0),
        String::from_utf8_lossy(&version).trim()
    );
    Ok(out)
}

/// The package version: the workspace's (as `--version` prints first).
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

const CONFIG_PLACEHOLDER: &str = "\
# /etc/nono-agent/config.toml: the host configuration of nono-agent.
# Every setting is optional; as shipped this file sets nothing.
# It is a conffile: upgrades keep your changes.
";

const POSTINST: &str = r#"#!/bin/sh
# nono-agent postinst: with systemd running, enable and start the socket (the
# daemon starts on the first client). Without systemd (containers, chroots,
# image builds) it does nothing: start `nono-agent daemon` yourself if wanted.
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    systemctl enable nono-agent.socket >/dev/null 2>&1 || true
    systemctl start nono-agent.socket || true
    # An upgrade: prerm stopped the old daemon; the socket starts the new
    # one on the next client.
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
# nono-agent prerm: stop the daemon (and, on removal, its socket) while the
# binary is still here; on removal also remove the daemon's state (pins under
# <bpffs>/nono-daemon, cgroups under <cgroup2>/nono-daemon and their
# sandboxes, /run/nono-agent/nono-daemon). `cleanup --daemon` refuses while a
# daemon answers on /run/nono-agent/daemon.sock (one started by hand without
# systemd: stop it first, then run the same command).
set -e
case "$1" in
remove|deconfigure)
    if [ -d /run/systemd/system ]; then
        systemctl stop nono-agent.socket nono-agent.service >/dev/null 2>&1 || true
        systemctl disable nono-agent.socket nono-agent.service >/dev/null 2>&1 || true
    fi
    /usr/bin/nono-agent cleanup --daemon nono-daemon >/dev/null || true
    ;;
upgrade|failed-upgrade)
    # Keep the socket (clients wait in its backlog); restart the daemon
    # with the new binary.
    if [ -d /run/systemd/system ]; then
        systemctl stop nono-agent.service >/dev/null 2>&1 || true
    fi
    ;;
esac
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
# nono-agent postrm: forget the removed units; on purge remove the host
# configuration and the daemon's runtime directory. /run/nono-agent itself
# goes only when empty: it also holds the lock files of sandboxes run
# without the daemon, which may still be running.
set -e
case "$1" in
remove|purge)
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
    ;;
esac
if [ "$1" = purge ]; then
    rm -rf /etc/nono-agent
    rm -rf /run/nono-agent/nono-daemon
    rm -f /run/nono-agent/daemon.sock
    rmdir /run/nono-agent 2>/dev/null || true
fi
exit 0
"#;

fn write_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    fs::write(path, data).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn gzip(path: &Path) -> Result<Vec<u8>> {
    output(Command::new("gzip").args(["-9", "-n", "-c"]).arg(path))
}

/// Total size of the files under `dir` in KiB (for Installed-Size).
fn installed_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_dir() {
            if e.file_name() != "DEBIAN" {
                total += installed_kib(&e.path())? * 1024;
            }
        } else {
            total += m.len().div_ceil(1024) * 1024;
        }
    }
    Ok(total.div_ceil(1024))
}

/// `target/dist/nono-agent_<version>_amd64.deb` (+ `.sha256`).
pub fn deb() -> Result<PathBuf> {
    let root = workspace_root();
    let bin = dist()?;
    let pages = man()?;
    let stage = root.join("target/deb/stage");
    let _ = fs::remove_dir_all(&stage);
    let dir_mode = |p: &Path| -> Result<()> {
        fs::create_dir_all(p)?;
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    write_mode(&stage.join("usr/bin").join(NAME), &fs::read(&bin)?, 0o755)?;
    for unit in ["nono-agent.service", "nono-agent.socket"] {
        let src = root.join("dist/systemd").join(unit);
        let data = fs::read(&src).with_context(|| format!("read {}", src.display()))?;
        write_mode(&stage.join("lib/systemd/system").join(unit), &data, 0o644)?;
    }
    let config_src = root.join("dist/config.toml");
    let config = if config_src.exists() {
        fs::read(&config_src)?
    } else {
        CONFIG_PLACEHOLDER.as_bytes().to_vec()
    };
    write_mode(&stage.join("etc/nono-agent/config.toml"), &config, 0o644)?;
    dir_mode(&stage.join("etc/nono-agent/profiles"))?;
    for p in &pages {
        let name = p.file_name().context("man page name")?.to_string_lossy();
        write_mode(
            &stage.join("usr/share/man/man1").join(format!("{name}.gz")),
            &gzip(p)?,
            0o644,
        )?;
    }
    for (shell, dest) in [
        ("bash", "usr/share/bash-completion/completions/nono-agent"),
        ("zsh", "usr/share/zsh/vendor-completions/_nono-agent"),
        (
            "fish",
            "usr/share/fish/vendor_completions.d/nono-agent.fish",
        ),
    ] {
        let script = output(Command::new(&bin).args(["completions", shell]))?;
        write_mode(&stage.join(dest), &script, 0o644)?;
    }
    let copyright = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: nono-agent\n\n\
         Files: *\n\
         License: Apache-2.0\n \
         On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n";
    write_mode(
        &stage.join("usr/share/doc/nono-agent/copyright"),
        copyright.as_bytes(),
        0o644,
    )?;
    // Every directory 0755 (the umask of whoever builds must not leak in).
    fn fix_dirs(d: &Path) -> Result<()> {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        for e in fs::read_dir(d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                fix_dirs(&e.path())?;
            }
        }
        Ok(())
    }
    fix_dirs(&stage)?;
    let control = format!(
        "Package: {NAME}\n\
         Version: {}\n\
         Architecture: amd64\n\
         Maintainer: nono-agent maintainers <maintainers@nono-agent.invalid>\n\
         Installed-Size: {}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: network enforcer for sandboxed process trees\n \
         nono-agent runs a command with its network confined, in the kernel\n \
         (cgroup BPF or seccomp), to loopback and a filtering proxy. The\n \
         daemon (nono-agent.socket) serves the BPF enforcer to unprivileged\n \
         users. Statically linked; the BPF programs are built in.\n",
        version(),
        installed_kib(&stage)?
    );
    let debian = stage.join("DEBIAN");
    write_mode(&debian.join("control"), control.as_bytes(), 0o644)?;
    write_mode(
        &debian.join("conffiles"),
        b"/etc/nono-agent/config.toml\n",
        0o644,
    )?;
    write_mode(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write_mode(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write_mode(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;
    let out = root
        .join("target/dist")
        .join(format!("{NAME}_{}_amd64.deb", version()));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&out))
    .context("dpkg-deb")?;
    let name = out.file_name().context("deb name")?;
    let sum = output(
        Command::new("sha256sum")
            .arg(name)
            .current_dir(root.join("target/dist")),
    )?;
    fs::write(
        root.join("target/dist")
            .join(format!("{}.sha256", name.to_string_lossy())),
        sum,
    )?;
    println!("{} ({} bytes)", out.display(), fs::metadata(&out)?.len());
    Ok(out)
}
