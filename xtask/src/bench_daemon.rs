//! `cargo xtask bench` (daemon part; alone: `cargo xtask bench --only daemon`
//! or `cargo xtask bench-daemon`): what a sandbox costs when a running
//! `nono-agent daemon` makes it, next to the other ways of starting one.
//!
//! 1. Start-up, interleaved round by round (order rotated): `/bin/true`;
//!    `exec` through the daemon as uid 65534; `exec --no-daemon --enforcer
//!    bpf` as root (programs loaded per sandbox); `exec --enforcer seccomp`
//!    as uid 65534; `bwrap --unshare-net --dev-bind / / /bin/true`.
//! 2. The daemon's VmRSS with 0, 1, 10, 100, 1000 live sandboxes (clients
//!    `exec -- sleep` as uid 65534), and the time of one more `exec` at
//!    each level.
//! 3. Loopback connect()+close() through a daemon-made sandbox vs outside
//!    (and the direct BPF path), best of 6, order rotated.
//!
//! The daemon runs under a unique name (`nono-daemon-bench-<pid>`) with its
//! socket in a temporary directory; everything it made (cgroup subtree, pins,
//! state directory) is removed when the bench ends, also on error.

use anyhow::{bail, Context as _, Result};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged user the clients run as (nobody).
const NOBODY: u32 = 65534;
/// Live-sandbox levels for the memory / per-sandbox cost table.
const LEVELS: [usize; 5] = [0, 1, 10, 100, 1000];
/// How long the background clients sleep (long enough to outlast the ramp
/// to 1000 and the measurements; they are killed at the end anyway).
const CLIENT_SLEEP: &str = "600";

/// Median and spread of a set of timings.
struct Spread {
    min: Duration,
    p10: Duration,
    p25: Duration,
    p50: Duration,
    p75: Duration,
    p90: Duration,
}

fn spread(mut v: Vec<Duration>) -> Spread {
    v.sort();
    let n = v.len();
    let at = |q: usize| v[(n * q / 100).min(n - 1)];
    Spread {
        min: v[0],
        p10: at(10),
        p25: at(25),
        p50: at(50),
        p75: at(75),
        p90: at(90),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Everything the bench started or made; dropping it stops and removes it.
struct Rig {
    dir: PathBuf,
    name: String,
    cgroup2: PathBuf,
    daemon: Option<Child>,
    clients: Vec<Child>,
}

impl Rig {
    fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }
    fn agent(&self) -> PathBuf {
        self.dir.join("nono-agent")
    }
    fn xtask(&self) -> PathBuf {
        self.dir.join("xtask")
    }
    fn records(&self) -> PathBuf {
        Path::new("/run/nono-agent")
            .join(&self.name)
            .join("sandboxes")
    }
    fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Child::id)
    }

    /// Sandboxes the daemon has on record.
    fn live(&self) -> usize {
        std::fs::read_dir(self.records()).map_or(0, |d| d.count())
    }

    fn vm_rss_kib(&self) -> Result<u64> {
        let p = format!("/proc/{}/status", self.daemon_pid());
        let s = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<daemon>/status")
    }

    /// `nono-agent exec` through the daemon, as uid 65534.
    fn daemon_exec(&self) -> Command {
        let mut c = as_nobody(&self.agent());
        c.args(["exec", "-q", "--enforcer", "bpf", "--daemon-socket"])
            .arg(self.socket());
        c
    }

    /// Stops the clients (SIGTERM, then SIGKILL after 10 s).
    fn stop_clients(&mut self) {
        for c in &self.clients {
            // SAFETY: plain kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.clients {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        self.clients.clear();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop_clients();
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: kill(2) on our own, unreaped child.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(d.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        let cg = self.cgroup2.join(&self.name);
        if cg.is_dir() {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
            remove_cgroup_tree(&cg);
        }
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf").join(&self.name));
        let _ = std::fs::remove_dir_all(Path::new("/run/nono-agent").join(&self.name));
        let _ = std::fs::remove_dir_all(&self.dir);
        let left: Vec<String> = [
            cg,
            Path::new("/sys/fs/bpf").join(&self.name),
            Path::new("/run/nono-agent").join(&self.name),
        ]
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
        if !left.is_empty() {
            eprintln!("bench daemon: could not remove {}", left.join(", "));
        }
    }
}

/// rmdir a cgroup subtree, deepest first (retrying while killed processes
/// leave it).
fn remove_cgroup_tree(dir: &Path) {
    fn subdirs(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    subdirs(&e.path(), out);
                    out.push(e.path());
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut all = Vec::new();
        subdirs(dir, &mut all);
        all.push(dir.to_path_buf());
        let mut ok = true;
        for d in &all {
            ok &= std::fs::remove_dir(d).is_ok() || !d.exists();
        }
        if ok || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command run as uid/gid 65534 with no supplementary groups (what
/// `setpriv --reuid=65534 --regid=65534 --clear-groups` does: std drops the
/// groups when root changes uid), and killed if the bench dies.
fn as_nobody(program: &Path) -> Command {
    let mut c = Command::new(program);
    c.uid(NOBODY).gid(NOBODY).current_dir("/");
    die_with_parent(&mut c);
    c
}

fn die_with_parent(c: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the closure.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The cgroup2 mount point from /proc/self/mountinfo.
fn cgroup2_mount() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount = pre.split(' ').nth(4)?;
            (post.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .context("no cgroup2 mount")
}

/// Installs bubblewrap from Debian when `bwrap` is missing.
fn ensure_bwrap() -> Result<PathBuf> {
    if let Some(p) = crate::bench_proxy::which("bwrap") {
        return Ok(p);
    }
    println!(
        "bench: installing bubblewrap (apt-get install -y --no-install-recommends bubblewrap)"
    );
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "bubblewrap",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install bubblewrap failed ({status}); try `apt-get update` first");
    }
    crate::bench_proxy::which("bwrap").context("bwrap not found after installing bubblewrap")
}

fn run_ok(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    let d = t.elapsed();
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(d)
}

pub fn run(root: &Path, runs: usize, iterations: usize) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the daemon bench needs root (it starts a daemon and runs clients as uid 65534)");
    }
    let runs = runs.max(30);
    let bwrap = ensure_bwrap()?;
    // A directory uid 65534 can traverse, with world-executable copies of
    // the binaries (the checkout may not be readable by other users).
    let dir = std::env::temp_dir().join(format!("nono-bench-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let mut rig = Rig {
        dir,
        name: format!("nono-daemon-bench-{}", std::process::id()),
        cgroup2: cgroup2_mount()?,
        daemon: None,
        clients: Vec::new(),
    };
    for bin in ["nono-agent", "xtask"] {
        let to = rig.dir.join(bin);
        std::fs::copy(root.join("target/release").join(bin), &to)
            .with_context(|| format!("copying target/release/{bin}"))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
    }
    let log = rig.dir.join("daemon.log");
    let mut daemon = Command::new(rig.agent());
    daemon
        .arg("daemon")
        .arg("--socket")
        .arg(rig.socket())
        .args(["--name", &rig.name])
        .args(["--max-sandboxes-per-uid", "2000"])
        .args(["--max-connections-per-uid", "4000"])
        .args(["--max-requests-per-sec", "100000"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?);
    die_with_parent(&mut daemon);
    rig.daemon = Some(daemon.spawn().context("starting nono-agent daemon")?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rig.socket().exists() {
        if Instant::now() > deadline
            || matches!(rig.daemon.as_mut().map(Child::try_wait), Some(Ok(Some(_))))
        {
            bail!(
                "the daemon did not come up:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The daemon path really is taken (not a silent fallback).
    let check = {
        let mut c = as_nobody(&rig.agent());
        c.args(["exec", "--enforcer", "bpf", "--daemon-socket"])
            .arg(rig.socket())
            .args(["--", "/bin/true"]);
        c.output()?
    };
    let check_err = String::from_utf8_lossy(&check.stderr);
    if !check.status.success() || !check_err.contains("enforcer: bpf (daemon)") {
        bail!("exec through the daemon did not say `enforcer: bpf (daemon)`:\n{check_err}");
    }
    println!(
        "daemon: {} (name {}, uid {NOBODY} clients)",
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("nono-agent daemon: "),
        rig.name
    );

    startup(&rig, &bwrap, runs)?;
    memory(&mut rig)?;
    connect(&rig, iterations)?;
    drop(rig);
    println!("daemon bench: daemon stopped; cgroup, pins and state removed");
    Ok(())
}

/// Start-up of the five ways, interleaved.
fn startup(rig: &Rig, bwrap: &Path, runs: usize) -> Result<()> {
    let true_bin = "/bin/true";
    let labels = [
        "/bin/true",
        "exec via daemon (uid 65534)",
        "exec --no-daemon bpf (root)",
        "exec seccomp (uid 65534)",
        "bwrap --unshare-net",
    ];
    let make = |i: usize| -> Command {
        match i {
            0 => Command::new(true_bin),
            1 => {
                let mut c = rig.daemon_exec();
                c.args(["--", true_bin]);
                c
            }
            2 => {
                let mut c = Command::new(rig.agent());
                c.args([
                    "exec",
                    "-q",
                    "--no-daemon",
                    "--enforcer",
                    "bpf",
                    "--",
                    true_bin,
                ]);
                c
            }
            3 => {
                let mut c = as_nobody(&rig.agent());
                c.args([
                    "exec",
                    "-q",
                    "--no-daemon",
                    "--enforcer",
                    "seccomp",
                    "--",
                    true_bin,
                ]);
                c
            }
            _ => {
                let mut c = Command::new(bwrap);
                c.args(["--unshare-net", "--dev-bind", "/", "/", true_bin]);
                c
            }
        }
    };
    let mut cmds: Vec<Command> = (0..labels.len()).map(make).collect();
    for c in &mut cmds {
        for _ in 0..5 {
            run_ok(c)?;
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); labels.len()];
    for round in 0..runs {
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.rotate_left(round % labels.len());
        for i in order {
            times[i].push(run_ok(&mut cmds[i])?);
        }
    }
    let s: Vec<Spread> = times.into_iter().map(spread).collect();
    println!(
        "\n== daemon start-up: {runs} runs each after 5 warm-up, interleaved (order rotated per round); ms ==",
    );
    println!(
        "{:<30} {:>7} {:>7} {:>15} {:>15} {:>10}",
        "", "p50", "min", "p25..p75", "p10..p90", "added p50"
    );
    for (l, x) in labels.iter().zip(&s) {
        println!(
            "{:<30} {:>7.2} {:>7.2} {:>7.2}..{:<7.2} {:>7.2}..{:<7.2} {:>10.2}",
            l,
            ms(x.p50),
            ms(x.min),
            ms(x.p25),
            ms(x.p75),
            ms(x.p10),
            ms(x.p90),
            ms(x.p50) - ms(s[0].p50)
        );
    }
    println!(
        "daemon path added over /bin/true  {:>7.2} ms p50   (goal <= 2 ms)",
        ms(s[1].p50) - ms(s[0].p50)
    );
    Ok(())
}

/// Daemon RSS and one more exec's time with N live sandboxes.
///
/// These execs run back to back, unlike the interleaved start-up table:
/// moving the child into its cgroup (a write to `cgroup.procs`) waits for an
/// RCU grace period (cgroup_threadgroup_rwsem) unless another move happened
/// just before, so back to back is the warm case and the interleaved table
/// the cold one (without the `favordynmods` cgroup2 mount option).
fn memory(rig: &mut Rig) -> Result<()> {
    const EXTRA_RUNS: usize = 30;
    println!(
        "\n== daemon with N live sandboxes (clients `exec -- sleep {CLIENT_SLEEP}` as uid {NOBODY}); one more exec -q -- /bin/true, {EXTRA_RUNS} runs back to back =="
    );
    println!(
        "{:>6} {:>6} {:>12} {:>14} {:>10} {:>10} {:>10} {:>9}",
        "N", "live", "VmRSS KiB", "KiB/sandbox", "exec p50", "p10", "p90", "ramp s"
    );
    let rss0 = rig.vm_rss_kib()?;
    for &n in &LEVELS {
        let t = Instant::now();
        while rig.clients.len() < n {
            let mut c = rig.daemon_exec();
            c.args(["--", "sleep", CLIENT_SLEEP])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            rig.clients.push(c.spawn().context("starting a client")?);
            // Keep the number of clients mid-start-up bounded.
            if rig.clients.len().is_multiple_of(50) {
                wait_live(rig, rig.clients.len(), Duration::from_secs(60))?;
            }
        }
        wait_live(rig, n, Duration::from_secs(120))?;
        let ramp = t.elapsed();
        // Let the daemon settle (its per-connection work is done).
        std::thread::sleep(Duration::from_millis(300));
        let rss = rig.vm_rss_kib()?;
        let mut cmd = rig.daemon_exec();
        cmd.args(["--", "/bin/true"]);
        run_ok(&mut cmd)?;
        let mut v = Vec::with_capacity(EXTRA_RUNS);
        for _ in 0..EXTRA_RUNS {
            v.push(run_ok(&mut cmd)?);
        }
        let x = spread(v);
        // An ended sandbox's record goes just after its client was
        // answered: give the last one a moment (the check below says if not).
        let _ = wait_live(rig, n, Duration::from_secs(2));
        let live = rig.live();
        let per = if n > 0 {
            format!("{:.1}", (rss as f64 - rss0 as f64) / n as f64)
        } else {
            "-".to_string()
        };
        println!(
            "{:>6} {:>6} {:>12} {:>14} {:>10.2} {:>10.2} {:>10.2} {:>9.1}",
            n,
            live,
            rss,
            per,
            ms(x.p50),
            ms(x.p10),
            ms(x.p90),
            ramp.as_secs_f64()
        );
        if live != n {
            bail!("{live} sandboxes on record after the measurement, expected {n}");
        }
    }
    let t = Instant::now();
    rig.stop_clients();
    wait_live(rig, 0, Duration::from_secs(30))?;
    println!(
        "all clients stopped, 0 sandboxes on record after {:.1} s; daemon VmRSS {} KiB",
        t.elapsed().as_secs_f64(),
        rig.vm_rss_kib()?
    );
    Ok(())
}

fn wait_live(rig: &mut Rig, n: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if rig.live() == n {
            return Ok(());
        }
        if let Some(Ok(Some(st))) = rig.daemon.as_mut().map(Child::try_wait) {
            bail!("the daemon exited ({st})");
        }
        for c in &mut rig.clients {
            if let Ok(Some(st)) = c.try_wait() {
                bail!("a client exited early ({st})");
            }
        }
        if Instant::now() > deadline {
            bail!("{} sandboxes on record, waited for {n}", rig.live());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Loopback connect()+close() outside, through the daemon, and with the
/// programs loaded directly: best of 6, order rotated.
fn connect(rig: &Rig, iterations: usize) -> Result<()> {
    println!(
        "\n== daemon: loopback connect()+close(), {iterations} iterations, best of 6 per side, order rotated =="
    );
    let listener = crate::bench::listen_loopback()?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let loop_args = [
        "connect-loop".to_string(),
        addr.to_string(),
        iterations.to_string(),
    ];
    let labels = [
        "outside (uid 65534)",
        "daemon bpf (uid 65534)",
        "direct bpf (root)",
    ];
    let mut res: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..6 {
        let mut order = [0usize, 1, 2];
        order.rotate_left(round % 3);
        for side in order {
            let mut cmd = match side {
                0 => as_nobody(&rig.xtask()),
                1 => {
                    let mut c = rig.daemon_exec();
                    c.arg("--").arg(rig.xtask());
                    c
                }
                _ => {
                    let mut c = Command::new(rig.agent());
                    c.args(["exec", "-q", "--no-daemon", "--enforcer", "bpf", "--"])
                        .arg(rig.xtask());
                    c
                }
            };
            cmd.args(&loop_args);
            res[side].push(crate::bench::run_loop(&mut cmd)?);
        }
    }
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    for (l, v) in labels.iter().zip(&res) {
        println!(
            "{l:<24} {:>8.2} µs per connect+close   runs {v:.2?}",
            best(v)
        );
    }
    println!(
        "ratio daemon/outside     {:>8.3}x   (goal <= 1.05x)",
        best(&res[1]) / best(&res[0])
    );
    println!(
        "ratio direct bpf/outside {:>8.3}x",
        best(&res[2]) / best(&res[0])
    );
    Ok(())
}
