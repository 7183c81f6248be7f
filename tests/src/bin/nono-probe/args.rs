//! Command-line options, and the addresses several vectors derive from them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::exit;

use nono_tests::probe_vectors::Vector;

pub(crate) struct Args {
    pub(crate) vector: String,
    opts: HashMap<String, String>,
}

impl Args {
    pub(crate) fn parse() -> Args {
        let mut it = std::env::args().skip(1);
        let vector = match it.next() {
            Some(v) if v == "--list" => {
                for v in Vector::ALL {
                    println!("{v}");
                }
                exit(0);
            }
            Some(v) => v,
            None => usage("missing VECTOR"),
        };
        let mut opts = HashMap::new();
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else {
                usage(&format!("unexpected argument {k:?}"));
            };
            let Some(val) = it.next() else {
                usage(&format!("--{key} needs a value"));
            };
            opts.insert(key.to_string(), val);
        }
        Args { vector, opts }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.opts.get(key).map(String::as_str)
    }

    pub(crate) fn req(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| usage(&format!("vector {} needs --{key}", self.vector)))
    }

    pub(crate) fn num<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> T {
        match self.get(key) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| usage(&format!("--{key}: bad number {v:?}"))),
            None => {
                default.unwrap_or_else(|| usage(&format!("vector {} needs --{key}", self.vector)))
            }
        }
    }

    /// The options the library's network attempts take; a malformed value
    /// is a usage error, a missing one is left to the attempt.
    pub(crate) fn net(&self) -> nono_agent::selftest::probe::NetArgs {
        let opt = |k: &str| self.get(k).map(|_| self.num::<u16>(k, None));
        let size = |k: &str| self.get(k).map(|_| self.num::<usize>(k, None));
        nono_agent::selftest::probe::NetArgs {
            target: self.get("target").map(|_| self.target()),
            port: opt("port"),
            id: opt("id"),
            iface: self.get("iface").map(str::to_string),
            tag: self.get("tag").map(str::to_string),
            count: size("count"),
            proxy_endpoint: self.get("proxy-endpoint").map(|_| proxy_arg(self)),
            bytes: size("bytes"),
        }
    }

    pub(crate) fn target(&self) -> IpAddr {
        let t = self.req("target");
        t.parse()
            .unwrap_or_else(|_| usage(&format!("--target: bad address {t:?}")))
    }

    pub(crate) fn port(&self) -> u16 {
        self.num("port", None)
    }

    pub(crate) fn target_sa(&self) -> SocketAddr {
        SocketAddr::new(self.target(), self.port())
    }
}

pub(crate) fn usage(msg: &str) -> ! {
    eprintln!("nono-probe: {msg}");
    eprintln!(
        "usage: nono-probe VECTOR [--target ADDR] [--port N] [--id N] [--iface NAME] [--tag TAG] \
         [--count N] [--pidfile PATH] [--sleep SECS] [--proxy-endpoint ADDR:PORT] [--bytes N]"
    );
    let names: Vec<&str> = Vector::ALL.iter().map(|v| v.name()).collect();
    eprintln!("vectors: {}", names.join(" "));
    exit(2);
}

pub(crate) fn proxy_arg(args: &Args) -> SocketAddr {
    let pe = args.req("proxy-endpoint");
    pe.parse()
        .unwrap_or_else(|_| usage(&format!("--proxy-endpoint: bad ADDR:PORT {pe:?}")))
}

/// 127.0.0.1:--port.
pub(crate) fn lo4(args: &Args) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port())
}
