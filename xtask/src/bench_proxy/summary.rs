//! The closing summary: every path's figures of the same run as medians of
//! all its runs with their spread (min–max), next to direct.

use std::fmt::Write as _;

use super::tunnels::TunnelRuns;
use super::Opts;

/// What the sections measured, every run kept.
#[derive(Default)]
pub(super) struct Summary {
    /// CONNECT bulk MB/s per path.
    pub tunnels: TunnelRuns,
    /// The machine's CPU seconds per GiB of each CONNECT bulk run.
    pub tunnel_cpu: TunnelRuns,
    /// HTTP req/s per path (label, every run).
    pub http: Vec<(String, Vec<f64>)>,
    /// The machine's CPU µs per request of each HTTP run.
    pub http_cpu: Vec<(String, Vec<f64>)>,
    /// Memory samples per proxy: (label, [(state, VmRSS KiB)]).
    pub memory: Vec<(String, Vec<(String, u64)>)>,
}

/// The median of `v` (the mean of the middle two for an even count).
pub(super) fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// "median [min–max] (n)" of `v`, or "-".
fn spread(v: &[f64]) -> String {
    spread_prec(v, 0)
}

/// [`spread`] with `prec` decimals.
fn spread_prec(v: &[f64], prec: usize) -> String {
    let Some(m) = median(v) else {
        return "-".into();
    };
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{m:.prec$} [{lo:.prec$}-{hi:.prec$}] n={}", v.len())
}

/// What the machine's CPUs could sustain at a median cost of `per_unit`
/// CPU seconds per unit, if nothing else ran: `cpus / per_unit`.
fn budget(v: &[f64], scale: f64) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    match median(v) {
        Some(m) if m > 0.0 => format!("{:.0}", cpus * scale / m),
        _ => "-".into(),
    }
}

fn ratio(v: &[f64], base: Option<f64>) -> String {
    match (median(v), base) {
        (Some(m), Some(b)) if b > 0.0 => format!("{:.2}x", m / b),
        _ => "-".into(),
    }
}

impl Summary {
    pub(super) fn table(&self, opts: &Opts) -> String {
        let mut out = String::from(
            "\n== summary: medians of every run in this invocation [min-max] n=runs, ratio of medians to direct ==\n",
        );
        if !self.tunnels.is_empty() {
            let _ = writeln!(out, "CONNECT bulk, {} MiB per transfer, MB/s:", opts.mib);
            let _ = writeln!(
                out,
                "{:<32} {:>26} {:>26} {:>8} {:>8}",
                "path", "upload", "download", "up/dir", "down/dir"
            );
            let direct = self.tunnels.iter().find(|t| t.0 == "direct");
            let (du, dd) = direct.map_or((None, None), |d| (median(&d.1 .0), median(&d.1 .1)));
            for (name, (up, down)) in &self.tunnels {
                let _ = writeln!(
                    out,
                    "{:<32} {:>26} {:>26} {:>8} {:>8}",
                    name,
                    spread(up),
                    spread(down),
                    ratio(up, du),
                    ratio(down, dd)
                );
            }
            if !self.tunnel_cpu.is_empty() {
                let _ = writeln!(
                    out,
                    "CONNECT bulk, CPU s/GiB of the whole machine (all processes and the kernel), \
                     and the MB/s that CPU allows on {} CPUs:",
                    std::thread::available_parallelism().map_or(0, |n| n.get())
                );
                let _ = writeln!(
                    out,
                    "{:<32} {:>26} {:>26} {:>8} {:>8}",
                    "path", "upload s/GiB", "download s/GiB", "up MB/s", "down MB/s"
                );
                let gib_mb = f64::from(1u32 << 30) / 1e6;
                for (name, (up, down)) in &self.tunnel_cpu {
                    let _ = writeln!(
                        out,
                        "{:<32} {:>26} {:>26} {:>8} {:>8}",
                        name,
                        spread_prec(up, 2),
                        spread_prec(down, 2),
                        budget(up, gib_mb),
                        budget(down, gib_mb)
                    );
                }
            }
        }
        if !self.http.is_empty() {
            let _ = writeln!(
                out,
                "HTTP GET, wrk -c{} -d{}s, req/s:",
                opts.connections, opts.duration
            );
            let direct = self.http.iter().find(|h| h.0.starts_with("direct"));
            let base = direct.and_then(|d| median(&d.1));
            for (name, runs) in &self.http {
                let _ = writeln!(
                    out,
                    "{:<34} {:>26} {:>8}",
                    name,
                    spread(runs),
                    ratio(runs, base)
                );
            }
            if !self.http_cpu.is_empty() {
                let _ = writeln!(
                    out,
                    "HTTP GET, CPU µs per request of the whole machine (wrk, origin, proxy, kernel), \
                     and the req/s that CPU allows:"
                );
                for (name, runs) in &self.http_cpu {
                    let _ = writeln!(
                        out,
                        "{:<34} {:>26} {:>8}",
                        name,
                        spread_prec(runs, 1),
                        budget(runs, 1e6)
                    );
                }
            }
        }
        for (name, samples) in &self.memory {
            let _ = writeln!(out, "memory, {name} (VmRSS MB, one run):");
            for (state, kib) in samples {
                let _ = writeln!(out, "  {state:<52} {:>8.1}", *kib as f64 / 1024.0);
            }
        }
        let _ = writeln!(
            out,
            "goals (issue 16): CONNECT >= 0.95x direct both ways; HTTP >= 0.40x direct; \
             1,000 tunnels <= 16 MB after 4 KiB, <= 24 MB after 64 KiB each way"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(spread(&[1.0, 5.0, 3.0]), "3 [1-5] n=3");
    }
}
