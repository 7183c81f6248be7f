//! Section 1: CONNECT tunnel throughput against a direct connection.

use anyhow::{bail, Result};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Instant;

use super::measure::{clock_ticks, cpu_ticks, machine_jiffies};
use super::proxies::{open_tunnel, ProxyUnderTest};
use super::rig::{in_netns, Net};
use super::{Opts, BULK_PORT, SERVER_V4};

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Up,
    Down,
}

/// One transfer of `bytes`; returns MB/s (10^6 bytes per second).
fn transfer(mut s: TcpStream, dir: Dir, bytes: u64) -> Result<f64> {
    let mut hdr = [0u8; 9];
    hdr[0] = if dir == Dir::Up { b'U' } else { b'D' };
    hdr[1..].copy_from_slice(&bytes.to_le_bytes());
    let mut buf = vec![0xa5u8; 256 * 1024];
    let t = Instant::now();
    s.write_all(&hdr)?;
    match dir {
        Dir::Up => {
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..n])?;
                left -= n as u64;
            }
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack)?;
            if u64::from_le_bytes(ack) != bytes {
                bail!(
                    "server received {} of {bytes} bytes",
                    u64::from_le_bytes(ack)
                );
            }
        }
        Dir::Down => {
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            if got != bytes {
                bail!("received {got} of {bytes} bytes");
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = s.shutdown(Shutdown::Both);
    Ok(bytes as f64 / secs / 1e6)
}

/// One transfer's figures.
#[derive(Clone, Copy, Default)]
struct Transfer {
    pub(super) mbps: f64,
    /// CPU seconds the proxy process used per GiB moved.
    pub(super) proxy_cpu_per_gib: Option<f64>,
    /// Share of the machine's CPUs busy during the transfer (0..1).
    pub(super) machine_busy: f64,
    /// CPU seconds the whole machine (every process and the kernel: client,
    /// proxy, origin, and whatever else runs) spent per GiB moved.
    pub(super) machine_cpu_per_gib: f64,
}

/// Every run's figure per path name: (upload, download).
pub(super) type TunnelRuns = Vec<(String, (Vec<f64>, Vec<f64>))>;

/// Returns the section's table and every run's figures for the summary:
/// MB/s, and the machine's CPU seconds per GiB.
pub(super) fn bench_tunnels(
    net: &Net,
    opts: &Opts,
    proxies: &[ProxyUnderTest],
) -> Result<(String, TunnelRuns, TunnelRuns)> {
    let bytes = opts.mib * 1024 * 1024;
    println!(
        "\n[1/3] tunnel throughput: {} MiB each way, {} rounds (every path each round, rotated)...",
        opts.mib, opts.rounds
    );
    let direct = SocketAddr::from((SERVER_V4, BULK_PORT));
    let tck = clock_ticks();
    let measure = |via: Option<&ProxyUnderTest>, dir: Dir| -> Result<Transfer> {
        let pid = via.map(|p| p.pid);
        let via = via.map(|p| (p.addr(), p.connect_request()));
        let cpu0 = pid.map(cpu_ticks);
        let m0 = machine_jiffies();
        let mbps = in_netns(&net.cli, move || {
            let s = match &via {
                None => {
                    let s = TcpStream::connect(direct)?;
                    s.set_nodelay(true)?;
                    s
                }
                Some((addr, req)) => open_tunnel(*addr, req)?,
            };
            transfer(s, dir, bytes)
        })?;
        let m1 = machine_jiffies();
        let gib = bytes as f64 / f64::from(1u32 << 30);
        Ok(Transfer {
            mbps,
            proxy_cpu_per_gib: pid
                .zip(cpu0)
                .map(|(p, c0)| (cpu_ticks(p) - c0) as f64 / tck / gib),
            machine_busy: (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64,
            machine_cpu_per_gib: (m1.0 - m0.0) as f64 / tck / gib,
        })
    };
    let nono = &proxies[0];
    // Every path every round, in an order rotated per round, so drift of
    // the shared machine spreads over all of them alike.
    let mut samples: HashMap<(&str, bool), Vec<Transfer>> = HashMap::new();
    let paths: Vec<Option<&ProxyUnderTest>> = std::iter::once(None)
        .chain(proxies.iter().map(Some))
        .collect();
    for round in 0..opts.rounds {
        for dir in [Dir::Up, Dir::Down] {
            let up = dir == Dir::Up;
            for k in 0..paths.len() {
                let via = paths[(k + round) % paths.len()];
                let name = via.map_or("direct", |p| p.name);
                match measure(via, dir) {
                    Ok(v) => samples.entry((name, up)).or_default().push(v),
                    Err(e) if via.is_some() && via.map(|p| p.name) != Some(nono.name) => {
                        eprintln!("bench-proxy: {name} tunnel failed: {e:#}")
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // The per-path table: best of the rounds for direct and ours, the first
    // run for the other proxies (as their labels say).
    let pick = |name: &str, up: bool| -> Option<Transfer> {
        let v = samples.get(&(name, up))?;
        if name == "tinyproxy" || name == "squid" {
            v.first().copied()
        } else {
            v.iter().copied().max_by(|a, b| a.mbps.total_cmp(&b.mbps))
        }
    };
    let mut best: HashMap<(&str, bool), Transfer> = HashMap::new();
    for path in &paths {
        let name = path.map_or("direct", |p| p.name);
        for up in [true, false] {
            if let Some(t) = pick(name, up) {
                best.insert((name, up), t);
            }
        }
    }
    let mut out = format!(
        "\n== 1. CONNECT tunnel bulk throughput, {} MiB per transfer, MB/s (10^6 B/s), best of {} for direct and ours ==\n",
        opts.mib, opts.rounds
    );
    let _ = writeln!(
        out,
        "{:<28} {:>8} {:>9} {:>10} {:>10} {:>14} {:>14} {:>16}",
        "path",
        "upload",
        "download",
        "up/direct",
        "down/direct",
        "proxy CPU s/GiB",
        "machine busy",
        "machine CPU s/GiB"
    );
    let (du, dd) = (best[&("direct", true)].mbps, best[&("direct", false)].mbps);
    let mut row = |name: &str, label: &str| {
        let (u, d) = (best.get(&(name, true)), best.get(&(name, false)));
        let f = |v: Option<&Transfer>| v.map_or("failed".to_string(), |v| format!("{:.0}", v.mbps));
        let r = |v: Option<&Transfer>, base: f64| {
            v.map_or("-".to_string(), |v| format!("{:.2}x", v.mbps / base))
        };
        let both = |g: &dyn Fn(&Transfer) -> String| {
            format!(
                "{}/{}",
                u.map_or("-".to_string(), g),
                d.map_or("-".to_string(), g)
            )
        };
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>9} {:>10} {:>10} {:>14} {:>14} {:>16}",
            label,
            f(u),
            f(d),
            r(u, du),
            r(d, dd),
            both(&|t| t
                .proxy_cpu_per_gib
                .map_or("-".to_string(), |c| format!("{c:.2}"))),
            both(&|t| format!("{:.0}%", t.machine_busy * 100.0)),
            both(&|t| format!("{:.2}", t.machine_cpu_per_gib)),
        );
    };
    row("direct", "direct (veth, no proxy)");
    row(nono.name, "nono-agent proxy CONNECT");
    row("tinyproxy", "tinyproxy CONNECT (1 run)");
    row("squid", "squid CONNECT (1 run)");
    for p in &proxies[1..] {
        if p.name != "tinyproxy" && p.name != "squid" {
            row(p.name, &format!("{} CONNECT", p.name));
        }
    }
    let _ = writeln!(
        out,
        "CPU and busy columns are upload/download; machine CPU = every process and the kernel \
         (the machine is shared: others' work counts too). goal: nono-agent >= 0.95x direct"
    );
    let runs = |f: fn(&Transfer) -> f64| -> TunnelRuns {
        paths
            .iter()
            .map(|p| {
                let name = p.map_or("direct", |p| p.name);
                let get = |up| {
                    samples
                        .get(&(name, up))
                        .map(|v| v.iter().map(f).collect::<Vec<_>>())
                        .unwrap_or_default()
                };
                (name.to_string(), (get(true), get(false)))
            })
            .collect()
    };
    Ok((out, runs(|t| t.mbps), runs(|t| t.machine_cpu_per_gib)))
}
