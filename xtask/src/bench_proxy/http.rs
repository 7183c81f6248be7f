//! Section 2: HTTP request rate and latency (wrk).

use anyhow::{bail, Context as _, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use super::cleanup::{run_registered, TempDir};
use super::measure::{clock_ticks, cpu_split, machine_jiffies, mem_status};
use super::origin::Server;
use super::proxies::ProxyUnderTest;
use super::rig::{in_netns, Net};
use super::{Opts, BODY, DOMAIN, ORIGIN_DIRECT, ORIGIN_NONO_DIAG, SERVER_V4};

struct WrkResult {
    pub(super) requests: u64,
    pub(super) duration_us: f64,
    /// Socket errors: connect, read, write, timeout.
    pub(super) errors: [u64; 4],
    pub(super) non2xx: u64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    pub(super) max_us: f64,
}

fn wrk_script(path: &Path, p: Option<&ProxyUnderTest>) -> Result<()> {
    let mut s = String::new();
    if let Some(p) = p {
        let _ = writeln!(s, "wrk.method = \"GET\"");
        let _ = writeln!(s, "wrk.path = \"http://{}/\"", p.http_authority);
        let _ = writeln!(s, "wrk.headers[\"Host\"] = \"{}\"", p.http_authority);
        if let Some(a) = &p.auth {
            let _ = writeln!(s, "wrk.headers[\"Proxy-Authorization\"] = \"{a}\"");
        }
    }
    s.push_str(
        r#"function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("NONO_RESULT %d %d %d %d %d %d %d %.0f %.0f %.0f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#,
    );
    std::fs::write(path, s)?;
    Ok(())
}

fn run_wrk(
    net: &Net,
    wrk: &Path,
    opts: &Opts,
    script: &Path,
    url: &str,
    secs: u64,
) -> Result<WrkResult> {
    let out = run_registered(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.cli))
            .arg(wrk)
            .arg(format!("-t{}", opts.wrk_threads))
            .arg(format!("-c{}", opts.connections))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "5s", "-s"])
            .arg(script)
            .arg(url),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("NONO_RESULT "))
        .with_context(|| {
            format!(
                "wrk printed no result ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0))
        .collect();
    if v.len() != 10 {
        bail!("unexpected wrk result line {line:?}");
    }
    Ok(WrkResult {
        requests: v[0] as u64,
        duration_us: v[1],
        errors: [v[2] as u64, v[3] as u64, v[4] as u64, v[6] as u64],
        non2xx: v[5] as u64,
        p50_us: v[7],
        p99_us: v[8],
        max_us: v[9],
    })
}

/// TCP sockets in TIME_WAIT in the client namespace.
fn time_wait(net: &Net) -> u64 {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.cli))
        .args(["cat", "/proc/net/sockstat"])
        .output();
    let Ok(out) = out else { return 0 };
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|&x| x == "tw")
                .and_then(|i| f.get(i + 1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Sets a sysctl in the client namespace; returns the previous value.
fn cli_sysctl(net: &Net, key: &str, value: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    in_netns(&net.cli, move || {
        let old = std::fs::read_to_string(&path)?.trim().to_string();
        std::fs::write(&path, &value)?;
        Ok(old)
    })
}

/// Every run's req/s per row label.
pub(super) type HttpRuns = Vec<(String, Vec<f64>)>;

struct HttpRow {
    pub(super) label: String,
    pub(super) proxy: Option<ProxyUnderTest>,
    /// Diagnostic: net.ipv4.tcp_tw_reuse=1 in the client namespace.
    pub(super) tw_reuse: bool,
}

pub(super) fn bench_http(
    net: &Net,
    opts: &Opts,
    tmp: &TempDir,
    server: &Server,
    wrk: &Path,
    proxies: &[ProxyUnderTest],
) -> Result<(String, HttpRuns, HttpRuns)> {
    println!(
        "\n[2/3] HTTP: wrk -t{} -c{} -d{}s per row (1 s warm-up each), {} rounds...",
        opts.wrk_threads, opts.connections, opts.duration, opts.rounds
    );
    let mut out = format!(
        "\n== 2. HTTP GET, absolute-form over keep-alive client connections: wrk -t{} -c{} -d{}s, {}-byte responses ==\n",
        opts.wrk_threads,
        opts.connections,
        opts.duration,
        BODY.len()
    );
    let _ = writeln!(
        out,
        "{:<34} {:>8} {:>8} {:>8} {:>8} {:>16} {:>7} {:>8} {:>9} {:>5} {:>8} {:>9} {:>10}",
        "client path",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errs c/r/w/t",
        "non-2xx",
        "orig conn",
        "CPU µs/rq",
        "sys%",
        "RSS MB",
        "new TW",
        "mach µs/rq"
    );
    let tck = clock_ticks();
    let mut rows = vec![HttpRow {
        label: "direct (no proxy)".into(),
        proxy: None,
        tw_reuse: false,
    }];
    for p in proxies {
        rows.push(HttpRow {
            label: p.name.into(),
            proxy: Some(p.clone()),
            tw_reuse: false,
        });
    }
    // The same proxy once more, with TIME_WAIT reuse allowed for its
    // connections to the origin (own origin port: fresh 4-tuples).
    let mut diag = proxies[0].clone();
    diag.http_authority = format!("{DOMAIN}:{ORIGIN_NONO_DIAG}");
    diag.origin_port = ORIGIN_NONO_DIAG;
    rows.push(HttpRow {
        label: "nono-agent, tcp_tw_reuse=1 (diag)".into(),
        proxy: Some(diag),
        tw_reuse: true,
    });
    // Every row every round, in an order rotated per round; each row's
    // line in the table is its median run (by req/s), the summary gets all.
    let mut runs: Vec<Vec<HttpRun>> = vec![Vec::new(); rows.len()];
    for round in 0..opts.rounds {
        for k in 0..rows.len() {
            let i = (k + round) % rows.len();
            let r = http_run(net, opts, tmp, server, wrk, &rows[i], i, tck)?;
            runs[i].push(r);
        }
    }
    let mut notes = Vec::new();
    let mut all = Vec::new();
    let mut cpu = Vec::new();
    for (row, mut r) in rows.iter().zip(runs) {
        all.push((row.label.clone(), r.iter().map(|x| x.0).collect::<Vec<_>>()));
        cpu.push((row.label.clone(), r.iter().map(|x| x.3).collect::<Vec<_>>()));
        r.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, line, row_notes, _) = r.swap_remove(r.len() / 2);
        out.push_str(&line);
        notes.extend(row_notes);
    }
    notes.sort();
    notes.dedup();
    let _ = writeln!(
        out,
        "each row is its median run (by req/s) of {} runs, rows rotated each round; \
         orig conn = TCP connections the origin accepted during the run; CPU µs/rq = the proxy \
         process's user+system CPU per request, sys% = the kernel's share of it; new TW = sockets \
         that entered TIME_WAIT in the client namespace during the run (default \
         ip_local_port_range has 28232 ports); mach µs/rq = CPU time of the whole machine \
         (wrk, origin, proxy, kernel, and whatever else runs on the shared machine) per request.",
        opts.rounds
    );
    let _ = writeln!(
        out,
        "tinyproxy is given the origin's IP address (it can only resolve names through the \
         system resolver); ours and squid resolve {DOMAIN} without DNS (--resolve, hosts_file). \
         (diag) is not a configuration to ship: it shows how much the proxy's closing of its \
         origin connections (TIME_WAIT on its side) costs."
    );
    for n in notes {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(out, "goal: nono-agent ahead of tinyproxy and squid");
    Ok((out, all, cpu))
}
/// One wrk run: (req/s, the table line, notes, the machine's CPU µs per
/// request).
type HttpRun = (f64, String, Vec<String>, f64);

/// One wrk run of `row`.
#[allow(clippy::too_many_arguments)]
fn http_run(
    net: &Net,
    opts: &Opts,
    tmp: &TempDir,
    server: &Server,
    wrk: &Path,
    row: &HttpRow,
    i: usize,
    tck: f64,
) -> Result<HttpRun> {
    let p = row.proxy.as_ref();
    let label = &row.label;
    let script = tmp.path.join(format!("wrk-{i}.lua"));
    wrk_script(&script, p)?;
    let (url, origin_port) = match p {
        None => (
            format!("http://{SERVER_V4}:{ORIGIN_DIRECT}/"),
            ORIGIN_DIRECT,
        ),
        Some(p) => (format!("http://127.0.0.1:{}/", p.port), p.origin_port),
    };
    let old = if row.tw_reuse {
        Some(cli_sysctl(net, "net.ipv4.tcp_tw_reuse", "1")?)
    } else {
        None
    };
    run_wrk(net, wrk, opts, &script, &url, 1)?;
    let (acc0, req0) = server.counts(origin_port);
    let cpu0 = p.map(|p| cpu_split(p.pid));
    let tw0 = time_wait(net);
    let m0 = machine_jiffies();
    let r = run_wrk(net, wrk, opts, &script, &url, opts.duration);
    let m1 = machine_jiffies();
    if let Some(old) = old {
        cli_sysctl(net, "net.ipv4.tcp_tw_reuse", &old)?;
    }
    let r = r?;
    let (acc1, req1) = server.counts(origin_port);
    let tw = time_wait(net).saturating_sub(tw0);
    let rate = r.requests as f64 / (r.duration_us / 1e6);
    let machine_us = (m1.0 - m0.0) as f64 / tck * 1e6 / r.requests.max(1) as f64;
    let (cpu, sys, rss) = match (p, cpu0) {
        (Some(p), Some((u0, s0))) => {
            let (u1, s1) = cpu_split(p.pid);
            let (u, s) = (u1 - u0, s1 - s0);
            let used = (u + s) as f64 / tck;
            (
                format!("{:.1}", used * 1e6 / r.requests.max(1) as f64),
                format!("{:.0}", 100.0 * s as f64 / (u + s).max(1) as f64),
                format!("{:.1}", mem_status(p.pid).0 as f64 / 1024.0),
            )
        }
        _ => ("-".into(), "-".into(), "-".into()),
    };
    let conns = acc1 - acc0;
    let e = r.errors;
    let mut out = String::new();
    let mut notes = Vec::new();
    let _ = writeln!(
        out,
        "{:<34} {:>8.0} {:>8.2} {:>8.2} {:>8.1} {:>16} {:>7} {:>8} {:>9} {:>5} {:>8} {:>9} {:>10.1}",
        label,
        rate,
        r.p50_us / 1e3,
        r.p99_us / 1e3,
        r.max_us / 1e3,
        format!("{}/{}/{}/{}", e[0], e[1], e[2], e[3]),
        r.non2xx,
        conns,
        cpu,
        sys,
        rss,
        tw,
        machine_us
    );
    let origin_reqs = req1 - req0;
    if origin_reqs > 0 && conns * 2 > origin_reqs {
        notes.push(format!(
            "{label}: the origin accepted {conns} connections for {origin_reqs} requests \
             ({:.2} per request): no keep-alive to the origin",
            conns as f64 / origin_reqs as f64
        ));
    }
    if e[1] * 2 > r.requests {
        notes.push(format!(
            "{label}: {} read errors for {} requests: it closes the client connection after \
             every response (wrk reconnects; the requests themselves succeeded unless non-2xx)",
            e[1], r.requests
        ));
    }
    Ok((rate, out, notes, machine_us))
}
