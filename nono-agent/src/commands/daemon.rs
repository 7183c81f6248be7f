//! `nono-agent daemon`: root check, options, and the server.

use anyhow::{bail, Result};

use crate::cli::DaemonArgs;
use crate::daemon::server::{self, Limits, Options};
use crate::sandbox::{privileges, registry};

/// Runs the daemon until it is told to stop.
pub async fn run(args: DaemonArgs) -> Result<i32> {
    crate::daemon::log::init(args.log_format);
    if !privileges::can_load_bpf() {
        bail!("the daemon needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)");
    }
    let socket_dir = args
        .socket
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .to_path_buf();
    let opts = Options {
        socket: args.socket,
        state_dir: std::path::Path::new(registry::STATE_DIR).join(&args.name),
        name: args.name,
        limits: Limits {
            sandboxes_per_uid: args.max_sandboxes_per_uid,
            connections_per_uid: args.max_connections_per_uid,
            requests_per_sec: args.max_requests_per_sec,
            entries_per_uid: args.max_entries_per_uid,
        },
        build_salt: args.build_salt,
        metrics_socket: match &args.metrics_socket {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some((p.clone(), args.metrics_socket_mode)),
            None => Some((socket_dir.join("metrics.sock"), args.metrics_socket_mode)),
        },
        metrics_listen: args.metrics_listen,
    };
    server::run(opts).await?;
    Ok(0)
}
