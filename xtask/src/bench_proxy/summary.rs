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
    /// HTTP req/s per path (label, every run).
    pub http: Vec<(String, Vec<f64>)>,
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
    let Some(m) = median(v) else {
        return "-".into();
    };
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{m:.0} [{lo:.0}-{hi:.0}] n={}", v.len())
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
