//! Unix sockets of well-known daemons that would run the sandbox's requests
//! outside the sandbox (a container engine starts an unconfined container;
//! the system bus reaches systemd and polkit). Connecting to them is refused
//! unless the profile lists the path.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// Paths checked (those that exist and are sockets are refused).
pub const WELL_KNOWN: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/run/crio/crio.sock",
    "/var/run/dbus/system_bus_socket",
    "/run/dbus/system_bus_socket",
    "/run/systemd/private",
    "/run/snapd.socket",
    "/run/libvirt/libvirt-sock",
    "/var/run/libvirt/libvirt-sock",
    "/run/polkit/agent-helper.socket",
];

/// The sockets to refuse, with their (device, inode): every well-known path
/// (plus the per-user session buses under /run/user) that exists and is a
/// socket, minus `allowed`.
pub fn denied(allowed: &[PathBuf]) -> Vec<(PathBuf, (u64, u64))> {
    let mut candidates: Vec<PathBuf> = WELL_KNOWN.iter().map(PathBuf::from).collect();
    if let Ok(users) = std::fs::read_dir("/run/user") {
        for u in users.flatten() {
            candidates.push(u.path().join("bus"));
            candidates.push(u.path().join("docker.sock"));
            candidates.push(u.path().join("podman/podman.sock"));
            candidates.push(u.path().join("systemd/private"));
        }
    }
    let allowed_ids: HashSet<(u64, u64)> = allowed.iter().filter_map(|p| socket_id(p)).collect();
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .filter_map(|p| {
            let id = socket_id(&p)?;
            let refuse =
                !allowed_ids.contains(&id) && !allowed.contains(&p) && seen.insert(p.clone());
            refuse.then_some((p, id))
        })
        .collect()
}

/// (device, inode) of a socket file, following symlinks; `None` if the path
/// is not a socket. Identity by inode catches every other name for the same
/// socket (symlinks, bind mounts, hard links).
pub fn socket_id(p: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(p).ok()?;
    m.file_type().is_socket().then(|| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_existing_sockets_and_not_allowed_ones() {
        let dir = std::env::temp_dir().join(format!("nono-daemons-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("d.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(socket_id(&sock).is_some());
        assert!(socket_id(&dir).is_none());
        assert!(socket_id(Path::new("/nonexistent/x")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
