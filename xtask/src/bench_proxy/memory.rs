//! Section 3: memory of the standalone proxy with N open tunnels.

use anyhow::{bail, Result};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::cleanup::{Proc, TempDir};
use super::measure::mem_status;
use super::rig::{in_netns, wait_port, Net};
use super::{Opts, DOMAIN, ECHO_PORT};

/// One memory sample: (state, (VmRSS KiB, VmHWM KiB, threads)).
pub(super) type MemSample = (String, (u64, u64, u64));

/// Measures `agent`'s proxy (`which` names it in the table); returns the
/// table and the samples.
#[allow(clippy::too_many_arguments)]
pub(super) fn bench_memory(
    net: &Net,
    opts: &Opts,
    agent: &Path,
    which: &str,
    port: u16,
    tmp: &TempDir,
    nono_args: &dyn Fn(u16) -> Vec<String>,
    auth: &str,
) -> Result<(String, Vec<MemSample>)> {
    let n = opts.tunnels;
    println!("\n[3/3] memory of {which}: a fresh standalone proxy, then {n} tunnels...");
    let mut proxy = Proc::spawn_in(
        &net.cli,
        "nono-agent proxy (memory)",
        Command::new(agent).args(nono_args(port)),
        &tmp.path.join(format!("nono-mem-{port}.log")),
    )?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    wait_port(&net.cli, addr)?;
    std::thread::sleep(Duration::from_millis(300));
    proxy.check_alive()?;
    let pid = proxy.pid();
    let connect = format!(
        "CONNECT {DOMAIN}:{ECHO_PORT} HTTP/1.1\r\nHost: {DOMAIN}:{ECHO_PORT}\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    let samples = Arc::new(Mutex::new(Vec::<MemSample>::new()));
    let sample = {
        let samples = samples.clone();
        move |label: String| {
            std::thread::sleep(Duration::from_millis(300));
            let m = mem_status(pid);
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((label, m));
        }
    };
    sample("0 tunnels (fresh process)".into());
    let result = in_netns(&net.cli, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let connect = Arc::new(connect);
            let mut tunnels = Vec::with_capacity(n);
            // Open in batches of 100 (the proxy's accept backlog is finite).
            let mut left = n;
            while left > 0 {
                let batch = left.min(100);
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..batch {
                    let c = connect.clone();
                    set.spawn(async move { tunnel_async(addr, &c, 4096).await });
                }
                while let Some(r) = set.join_next().await {
                    tunnels.push(r??);
                }
                left -= batch;
            }
            sample(format!("{n} tunnels open, 4 KiB echoed through each"));
            // Push 64 KiB each way through every tunnel, all at once.
            let mut set = tokio::task::JoinSet::new();
            for s in tunnels.drain(..) {
                set.spawn(async move {
                    let mut s = s;
                    echo(&mut s, 64 * 1024).await?;
                    anyhow::Ok(s)
                });
            }
            while let Some(r) = set.join_next().await {
                tunnels.push(r??);
            }
            sample(format!(
                "{n} tunnels open, after 64 KiB each way through each"
            ));
            drop(tunnels);
            tokio::time::sleep(Duration::from_secs(1)).await;
            sample(format!("0 tunnels (after closing the {n})"));
            anyhow::Ok(())
        })
    });
    proxy.check_alive()?;
    result?;
    let mut out = format!(
        "\n== 3. standalone proxy memory (/proc/PID/status), {n} CONNECT tunnels to an echo server ==\n"
    );
    if which != "nono-agent proxy" {
        let _ = writeln!(out, "({which})");
    }
    let _ = writeln!(
        out,
        "{:<52} {:>9} {:>9} {:>14} {:>8}",
        "state", "VmRSS MB", "VmHWM MB", "KiB per tunnel", "threads"
    );
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner());
    let base = samples.first().map_or(0, |s| s.1 .0);
    for (i, (label, (rss, hwm, thr))) in samples.iter().enumerate() {
        let per = if (1..=2).contains(&i) && n > 0 {
            format!("{:.1}", rss.saturating_sub(base) as f64 / n as f64)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{label:<52} {:>9.1} {:>9.1} {per:>14} {thr:>8}",
            *rss as f64 / 1024.0,
            *hwm as f64 / 1024.0,
        );
    }
    let _ = writeln!(
        out,
        "goal: <= 16 MB with 1,000 tunnels after 4 KiB, <= 24 MB after 64 KiB each way"
    );
    let samples: Vec<MemSample> = samples.to_vec();
    drop(proxy);
    Ok((out, samples))
}

async fn tunnel_async(
    proxy: SocketAddr,
    connect: &str,
    echo_bytes: usize,
) -> Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    s.write_all(connect.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 || head.len() > 16 * 1024 {
            bail!(
                "proxy closed before answering CONNECT: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head);
    if status.split_whitespace().nth(1) != Some("200") {
        bail!(
            "CONNECT refused: {}",
            status.lines().next().unwrap_or_default()
        );
    }
    echo(&mut s, echo_bytes).await?;
    Ok(s)
}

pub(super) async fn echo(s: &mut tokio::net::TcpStream, bytes: usize) -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let data = vec![0x42u8; bytes];
    let (mut r, mut w) = s.split();
    let mut back = vec![0u8; bytes];
    let (wr, rd) = tokio::join!(w.write_all(&data), r.read_exact(&mut back));
    wr?;
    rd?;
    if back != data {
        bail!("echo came back different");
    }
    Ok(())
}
