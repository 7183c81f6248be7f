//! Finds wrk, tinyproxy and squid, installing the Debian packages when missing.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::PACKAGES;

pub(super) struct Tools {
    pub(super) wrk: PathBuf,
    pub(super) tinyproxy: PathBuf,
    pub(super) squid: PathBuf,
    pub(super) tinyproxy_version: String,
    pub(super) squid_version: String,
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Finds wrk, tinyproxy and squid; installs the missing ones with apt-get
/// (services are kept from starting with a temporary policy-rc.d).
pub(super) fn ensure_tools(install: bool) -> Result<Tools> {
    for tool in ["ip", "nsenter"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: apt-get install iproute2 util-linux");
        }
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let cmd = format!(
            "apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        if !install || which("apt-get").is_none() {
            bail!("bench-proxy needs {}: {cmd}", missing.join(", "));
        }
        println!("bench-proxy: installing {} ({cmd})", missing.join(", "));
        // Keep the packages' init scripts from starting tinyproxy/squid as
        // system services (they would listen on the host's network).
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let created = if policy.exists() {
            false
        } else {
            std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
            std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            true
        };
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        if created {
            let _ = std::fs::remove_file(policy);
        }
        let status = status.context("running apt-get")?;
        if !status.success() {
            bail!("apt-get failed ({status}); try `apt-get update` first, then: {cmd}");
        }
    }
    let find = |n: &str| which(n).with_context(|| format!("{n} not found after installing"));
    let first_line = |bin: &Path, arg: &str| -> String {
        Command::new(bin)
            .arg(arg)
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).to_string()
                    + &String::from_utf8_lossy(&o.stderr);
                s.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    let tinyproxy = find("tinyproxy")?;
    let squid = find("squid")?;
    Ok(Tools {
        wrk: find("wrk")?,
        tinyproxy_version: first_line(&tinyproxy, "-v"),
        squid_version: first_line(&squid, "-v"),
        tinyproxy,
        squid,
    })
}
