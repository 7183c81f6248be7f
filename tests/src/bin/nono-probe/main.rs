//! `nono-probe`: performs exactly one network-escape attempt and prints one
//! JSON line describing what the *client side* saw:
//!
//! ```text
//! {"vector":"tcp4","ok":false,"errno":1,"detail":"connect: ...", ...}
//! ```
//!
//! `ok` means the syscalls of the attempt succeeded, i.e. the packet could have
//! left the machine.  The probe is not trusted by the tests: the server-side
//! oracle decides whether anything leaked.  Extra keys (`pid`, `sandbox`,
//! `cgroup`, `pin_dir`, `enforcer` = NONO_ENFORCER, `uid`, `marker`,
//! `steps`) help the tests correlate and diagnose. `pid` is the probe's pid
//! in its own pid namespace (2 under a privileged agent), not the host's.
//!
//! Usage: `nono-probe VECTOR [--target ADDR] [--port N] [--id N] [--iface NAME]
//! [--tag TAG] [--count N] [--pidfile PATH] [--sleep SECS]
//! [--proxy-endpoint ADDR:PORT] [--bytes N] [--marker M] [...]`.  Unknown
//! `--key value` pairs are accepted and ignored: the tests pass a unique
//! `--marker` so that every process of a run (forks inherit the command
//! line) can be found from the host. Exit code 0 whenever the attempt was
//! made (whatever its outcome), 2 on usage errors.
//!
//! Routing-option vectors (`srh6-*`, `rh2-*`, `lsrr4-*`, `ssrr4-*`) name
//! loopback port `--port` and route through `--target`; they add
//! `"refused_at"` (the step that rejected the option, or null).
//! `int80-socketcall` / `int80-socket` connect with i386 system calls
//! (`int 0x80`: socketcall(SYS_CONNECT), or socket + connect).
//! `steal-fds` takes its parent's descriptors with pidfd_getfd and uses
//! them (`--use links|cgroup|listener|all`: detach BPF links, write
//! ancestors' cgroup.procs through a cgroup directory, answer its own
//! seccomp notifications with "continue").
//!
//! Modes that are not one attempt: `race-sockaddr` (a sockaddr flipped
//! between loopback and `--target:--deny-port` under connecting threads),
//! `parallel-connect` (`--count` simultaneous loopback connects),
//! `signal-storm` (SIGURG every `--signal-us` to threads doing loopback
//! echo and UDP round trips plus a denied connect), `scm-rights` (fd passing
//! over unix socketpairs), `connect-loop` (connects every `--interval-ms`,
//! logging to `--logdir`, for a test that kills the agent meanwhile).
//! `hold-nocaps` is not a vector: it drops every capability (bounding,
//! ambient, effective, permitted, inheritable), stays uid 0 and sleeps.
//!
//! For the channel battery (`tests/tests/channels/`): `listen-serve` (a
//! TCP listener that writes `--secret` to every connection, or with
//! `--backlog 0 --accept 0 --mss N` one whose full queue makes the kernel
//! answer with SYN cookies; `ready.json` / `stop` in `--logdir`),
//! `udp-serve` (a UDP socket that records what it receives),
//! `bind-check` (TCP and UDP binds to `--addrs`), `bulk-hold` (queue up to
//! `--bytes` on a connection that is not read, then exit),
//! `bindtodevice-loopback4` / `bindtodevice-lo` (device-bound sends to
//! 127.0.0.1), `mcast-join` (one membership option, `--how`),
//! `unix-dgram-send` / `unix-stream-creds` (unix sends whose receiver
//! checks the credentials), `udp-cap-cmsg` (`SO_MARK` / IPv6 hop-by-hop
//! control messages) and `loopback-selftest` (servers and clients on
//! loopback in one process). The result line also carries `gid`.
//!
//! The names live once in `nono_tests::probe_vectors::Vector` (shared with
//! the tests' tables); `dispatch` maps each to its implementation, one
//! module per family: `connect` / `raw` (direct attempts), `reroute`
//! (routing options), `cgroup` / `detach` / `process` / `fds` /
//! `nocaps` (process and host-protection vectors), `int80`, `loops` /
//! `storm` (long-running modes), `inbound` / `device` / `multicast` /
//! `unix` / `selftest` (the channel battery), on the helpers in
//! `args`, `attempt`, `sock` and `bpf`.

mod args;
mod bpf;
mod cgroup;
mod detach;
mod device;
mod dispatch;
mod fds;
mod inbound;
mod loops;
mod multicast;
mod nocaps;
mod process;
mod selftest;
mod storm;
mod unix;

// The network vectors live in the agent's library (shared with `nono-agent
// selftest` and its hidden `__probe`); the process and channel modes here
// use their helpers under the same paths.
use nono_agent::selftest::probe::{attempt, connect, reroute, sock};

use std::io::{self, Write};
use std::time::Duration;

use nono_tests::probe_vectors::{UnknownVector, Vector as V};
use serde_json::{json, Value};

use crate::args::{usage, Args};
use crate::attempt::Steps;
use crate::process::{devnull_stdio, write_pidfile};

fn main() {
    let args = Args::parse();
    let mut steps = Steps(Vec::new());
    let mut extra = serde_json::Map::new();
    let vector: V = args
        .vector
        .parse()
        .unwrap_or_else(|e: UnknownVector| usage(&e.to_string()));
    let attempt = dispatch::run(vector, &args, &mut steps, &mut extra);

    let env = |k: &str| std::env::var(k).ok();
    let mut out = serde_json::Map::new();
    out.insert("vector".into(), json!(vector.name()));
    out.insert("ok".into(), json!(attempt.ok));
    out.insert("errno".into(), json!(attempt.errno));
    out.insert("detail".into(), json!(attempt.detail));
    // SAFETY: getpid never fails.
    out.insert("pid".into(), json!(unsafe { libc::getpid() }));
    out.insert("sandbox".into(), json!(env("NONO_SANDBOX_ID")));
    out.insert("cgroup".into(), json!(env("NONO_CGROUP")));
    out.insert("pin_dir".into(), json!(env("NONO_BPF_PIN_DIR")));
    out.insert("enforcer".into(), json!(env("NONO_ENFORCER")));
    // SAFETY: geteuid never fails.
    out.insert("uid".into(), json!(unsafe { libc::geteuid() }));
    // SAFETY: getegid never fails.
    out.insert("gid".into(), json!(unsafe { libc::getegid() }));
    out.insert("marker".into(), json!(args.get("marker")));
    out.insert("steps".into(), Value::Array(steps.0));
    out.extend(extra);
    let line = Value::Object(out).to_string();
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
    drop(stdout);

    if vector == V::KillAgent && args.get("sleep").is_some() {
        write_pidfile(&args);
        devnull_stdio();
        std::thread::sleep(Duration::from_secs(args.num::<u64>("sleep", Some(30))));
    }
}
