//! `nono-agent learn`: run the command once in audit mode, then write a
//! profile that extends the base with what it needed (`crate::learn`).
//!
//! The output file is checked before anything runs (it is never replaced
//! without `--force`), and the profile is written to a temporary file
//! beside it, loaded back exactly as `profile validate` would, and only
//! then moved into place: a file that would not load is never left behind.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};

use crate::cli::LearnArgs;
use crate::learn::{self, Base, Filesystem, Observations};
use crate::plan::ExecRequest;
use crate::profile::{self, ExpandContext, Loopback};

use super::exec;

/// The base when `--profile` is not given: what `exec --read/--write`
/// starts from, so that the learned profile confines the filesystem the
/// way a profile always does.
const DEFAULT_BASE: &str = "default";

/// Runs `learn`; returns the command's exit code.
pub async fn run(args: LearnArgs) -> Result<i32> {
    let LearnArgs {
        output,
        force,
        exec: exec_args,
    } = args;
    check_output(&output, force)?;
    let flag_domains = exec_args
        .proxy
        .allow_domain
        .iter()
        .map(|d| d.text.clone())
        .collect();
    let flag_cidrs = exec_args
        .proxy
        .allow_cidr
        .iter()
        .map(|c| c.text.clone())
        .collect();
    let flag_loopback_ports = exec_args.direct.loopback_ports.clone();
    let flag_fs = crate::profile::FsPolicy {
        read: exec_args.read.clone(),
        write: exec_args.write.clone(),
        exec: exec_args.exec.clone(),
    };
    let mut req: ExecRequest = exec_args.into();
    req.audit = true;
    let spec = req
        .profile
        .clone()
        .unwrap_or_else(|| DEFAULT_BASE.to_string());
    req.profile = Some(spec.clone());
    let ctx = ExpandContext::from_env();
    let base_profile =
        profile::load(&spec, &ctx).with_context(|| format!("the base profile {spec}"))?;
    let extends = if profile::is_path_spec(&spec) {
        // The learned file may live elsewhere: name the base absolutely.
        std::fs::canonicalize(&spec)
            .with_context(|| format!("the base profile {spec}"))?
            .to_string_lossy()
            .into_owned()
    } else {
        spec.clone()
    };
    let base = Base {
        extends,
        loopback_ports: match &base_profile.network.loopback {
            Loopback::Ports(p) => Some(p.clone()),
            Loopback::Any => None,
        },
        flag_domains,
        flag_cidrs,
        flag_loopback_ports,
        flag_fs: flag_fs.clone(),
    };

    let observed = std::sync::Arc::new(std::sync::Mutex::new(Observations::default()));
    let sink = observed.clone();
    let observer: crate::events::Observer = Box::new(move |line: &[u8]| {
        if let (Ok(v), Ok(mut o)) = (
            serde_json::from_slice::<serde_json::Value>(line),
            sink.lock(),
        ) {
            o.observe(&v);
        }
    });
    let finished = exec::run_observed(req, Some(observer)).await?;
    if !finished.ran {
        eprintln!("nono-agent: the command did not start; no profile was written");
        return Ok(finished.code);
    }
    // In audit mode the command may write what the user can: a base given
    // as a path it can reach could be rewritten during the run, and the
    // learned profile extends it by name. Refuse to write a profile over a
    // base that changed.
    let after = profile::load(&spec, &ctx).ok();
    if after.as_ref().map(|p| format!("{p:?}")) != Some(format!("{base_profile:?}")) {
        bail!(
            "the base profile {spec} changed (or became unreadable) while the command ran; \
             nothing was written (keep the base where the command cannot write it)"
        );
    }
    let obs = observed
        .lock()
        .map(|o| o.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let fs = match &finished.files {
        Ok(seen) => {
            if seen.unattributed > 0 {
                eprintln!(
                    "nono-agent: {} file event(s) arrived before the sandbox's mounts could be \
                     read and could not be told apart; any of the command's among them are not \
                     in the profile",
                    seen.unattributed
                );
            }
            if seen.overflow {
                eprintln!(
                    "nono-agent: WARNING: file events were lost (the kernel's queue overflowed, \
                     or the command opened more distinct files than are kept): the profile may \
                     lack paths the command used"
                );
            }
            let mut covered = base_profile.filesystem.clone();
            covered.read.extend(flag_fs.read.iter().cloned());
            covered.write.extend(flag_fs.write.iter().cloned());
            covered.exec.extend(flag_fs.exec.iter().cloned());
            let home = std::env::var_os("HOME").map(PathBuf::from);
            learn::filesystem(
                &seen.read,
                &seen.write,
                &covered,
                home.as_deref(),
                seen.unmarked.clone(),
            )
        }
        Err(why) => Filesystem::Unavailable(why.clone()),
    };
    let text = learn::render(&base, &obs, &fs);
    write_checked(&output, &text, force, &ctx)?;
    let files = match &fs {
        Filesystem::Learned { read, write, .. } => {
            format!("{} path(s) read, {} written", read.len(), write.len())
        }
        Filesystem::Unavailable(_) => "filesystem not learned".to_string(),
    };
    eprintln!(
        "nono-agent: learned profile written to {} ({} host name(s), {} address(es), {} loopback \
         port(s); {files})",
        output.display(),
        obs.names.len(),
        obs.addresses.len(),
        obs.loopback_ports.len()
    );
    if finished.code != 0 {
        eprintln!(
            "nono-agent: WARNING: the command exited with {}; the profile holds what it reached \
             before that",
            finished.code
        );
    }
    Ok(finished.code)
}

/// Refuses an existing output file (anything at that path, a symlink
/// too) unless `force`, and a directory that does not exist.
fn check_output(output: &Path, force: bool) -> Result<()> {
    if output.as_os_str().is_empty() {
        bail!("-o: an empty path");
    }
    match std::fs::symlink_metadata(output) {
        Ok(m) if m.is_dir() => bail!("-o {}: is a directory", output.display()),
        Ok(_) if !force => bail!(
            "-o {}: the file exists (--force replaces it)",
            output.display()
        ),
        _ => {}
    }
    let dir = parent_dir(output);
    if !dir.is_dir() {
        bail!(
            "-o {}: the directory {} does not exist",
            output.display(),
            dir.display()
        );
    }
    Ok(())
}

fn parent_dir(output: &Path) -> PathBuf {
    match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `text` beside `output`, loads it back as a profile, then moves it
/// into place (without `force`, never over a file that appeared meanwhile).
fn write_checked(output: &Path, text: &str, force: bool, ctx: &ExpandContext) -> Result<()> {
    use std::io::Write as _;
    let dir = parent_dir(output);
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "profile".into());
    let tmp = dir.join(format!(".{name}.learn-{}.toml", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let done = (|| -> Result<()> {
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        profile::validate_file(&tmp, ctx)
            .with_context(|| "the learned profile does not load (nothing was written)")?;
        if force {
            std::fs::rename(&tmp, output)
                .with_context(|| format!("replacing {}", output.display()))?;
        } else {
            std::fs::hard_link(&tmp, output)
                .with_context(|| format!("creating {} (--force replaces it)", output.display()))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    done
}
