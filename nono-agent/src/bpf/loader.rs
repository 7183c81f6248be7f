//! Loading this sandbox's copy of the BPF object and attaching it.
//!
//! Every sandbox loads its own object instance, so its `POLICY` and `EVENTS`
//! maps belong to it alone: concurrent sandboxes cannot see or change each
//! other's policy, and no per-cgroup lookup is needed in the hot path.

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::{CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockopt};
use aya::{Ebpf, EbpfLoader};
use nono_common::{Endpoint, Policy, Settings};

use super::rawlink;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The BPF object built by `build.rs` (see `cargo xtask build-ebpf`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nono"));

const SOCK_ADDR_PROGRAMS: [&str; 6] = [
    "connect4", "connect6", "sendmsg4", "sendmsg6", "bind4", "bind6",
];
const SOCK_PROGRAMS: [&str; 1] = ["sock_create"];

/// What keeps the programs attached: the object (programs, maps) and the
/// link fds. Dropping it closes the fds; pinned links stay attached until
/// their pins are removed.
pub struct Keep {
    _ebpf: Ebpf,
    _links: Vec<Link>,
    sockets: Option<PerCpuArray<MapData, u64>>,
}

impl Keep {
    /// Number of attached links.
    pub fn link_count(&self) -> usize {
        self._links.len()
    }

    /// How many inet sockets the sandbox created, if the count can be read.
    pub fn sockets_created(&self) -> Option<u64> {
        let m = self.sockets.as_ref()?;
        m.get(&0, 0).ok().map(|v| v.iter().sum())
    }
}

/// A loaded object whose programs are attached to one cgroup.
pub struct Attached {
    /// Programs, maps and links.
    pub keep: Keep,
    /// Denial events.
    pub events: RingBuf<MapData>,
    /// Per-CPU count of events the ring buffer had no room for.
    pub dropped: PerCpuArray<MapData, u64>,
}

#[allow(dead_code)] // held only for their Drop
enum Link {
    Pinned(PinnedLink),
    Unpinned(FdLink),
    /// aya 0.14 cannot turn a sockopt link into an `FdLink`, so that one is
    /// made with the raw call (see [`super::rawlink`]) and pinned by it.
    Raw(std::os::fd::OwnedFd),
}

/// Sum of a per-CPU counter.
pub fn dropped_events(dropped: &PerCpuArray<MapData, u64>) -> u64 {
    dropped.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// [`load_and_attach`] on a helper thread that cannot see the kernel BTF.
///
/// aya 0.14's `EbpfLoader::new()` reads and parses `/sys/kernel/btf/vmlinux`
/// (~9 MB, ~10 ms here) before `.btf(None)` can say it is not wanted; our
/// programs use no CO-RE, so that is pure start-up latency. The helper thread
/// unshares its own mount namespace (a per-thread operation) and covers
/// `/sys/kernel/btf` with an empty tmpfs, so the parse finds nothing. If that
/// trick is not possible, loading simply proceeds with the parse.
pub fn load_and_attach_fast(
    cgroup_dir: &Path,
    policy: &Policy,
    pin_dir: Option<&Path>,
) -> Result<Attached> {
    let cgroup_dir = cgroup_dir.to_path_buf();
    let pin_dir = pin_dir.map(Path::to_path_buf);
    let policy = *policy;
    std::thread::scope(|s| {
        s.spawn(move || {
            hide_kernel_btf_from_this_thread();
            load_and_attach(&cgroup_dir, &policy, pin_dir.as_deref())
        })
        .join()
        .map_err(|_| anyhow!("the BPF loader thread panicked"))?
    })
}

fn hide_kernel_btf_from_this_thread() {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    if unshare(CloneFlags::CLONE_NEWNS).is_err() {
        return;
    }
    if mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .is_err()
    {
        return;
    }
    let _ = mount(
        Some("tmpfs"),
        "/sys/kernel/btf",
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k"),
    );
}

/// Loads the object, writes `policy`, attaches every program to the cgroup at
/// `cgroup_dir` and pins each link into `pin_dir` (if given). Nothing is left
/// attached if this fails part-way: links are dropped with the error, and
/// pins are removed by the caller's teardown.
pub fn load_and_attach(
    cgroup_dir: &Path,
    policy: &Policy,
    pin_dir: Option<&Path>,
) -> Result<Attached> {
    // BTF is not needed: the programs use no CO-RE relocations. Skipping the
    // kernel BTF parse saves ~80 ms per sandbox.
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .load(OBJECT)
        .context("loading the BPF object into the kernel")?;

    write_policy(&mut ebpf, policy).context("writing the sandbox policy")?;
    verify_all(&mut ebpf)?;

    let cgroup =
        File::open(cgroup_dir).with_context(|| format!("opening {}", cgroup_dir.display()))?;
    let mut links = Vec::new();
    // Each program type has its own attach signature and link type; the
    // rest (take the link, make it an fd link, pin it) is the same.
    macro_rules! attach {
        ($ty:ty, $name:expr, |$p:ident| $attach:expr) => {{
            let name: &str = $name;
            let $p: &mut $ty = program(&mut ebpf, name)?
                .try_into()
                .with_context(|| format!("program {name} has the wrong type"))?;
            let id =
                $attach.with_context(|| format!("attaching {name} to {}", cgroup_dir.display()))?;
            $p.take_link(id)
                .with_context(|| format!("taking the {name} link"))?
        }};
    }
    for name in SOCK_ADDR_PROGRAMS {
        let link = attach!(CgroupSockAddr, name, |p| p
            .attach(&cgroup, CgroupAttachMode::Single));
        links.push(pin(fd_link(link, name)?, pin_dir, name)?);
    }
    for name in SOCK_PROGRAMS {
        let link = attach!(CgroupSock, name, |p| p
            .attach(&cgroup, CgroupAttachMode::Single));
        links.push(pin(fd_link(link, name)?, pin_dir, name)?);
    }
    let link = attach!(CgroupSkb, "egress", |p| p.attach(
        &cgroup,
        CgroupSkbAttachType::Egress,
        CgroupAttachMode::Single
    ));
    links.push(pin(fd_link(link, "egress")?, pin_dir, "egress")?);
    let link = attach!(CgroupSkb, "ingress", |p| p.attach(
        &cgroup,
        CgroupSkbAttachType::Ingress,
        CgroupAttachMode::Single
    ));
    links.push(pin(fd_link(link, "ingress")?, pin_dir, "ingress")?);
    links.push(attach_setsockopt(&mut ebpf, &cgroup, pin_dir)?);

    let events = RingBuf::try_from(
        ebpf.take_map("EVENTS")
            .ok_or_else(|| anyhow!("BPF object has no EVENTS map"))?,
    )
    .context("EVENTS map")?;
    let dropped = PerCpuArray::try_from(
        ebpf.take_map("DROPPED")
            .ok_or_else(|| anyhow!("BPF object has no DROPPED map"))?,
    )
    .context("DROPPED map")?;
    let sockets = ebpf
        .take_map("SOCKETS")
        .and_then(|m| PerCpuArray::try_from(m).ok());

    Ok(Attached {
        keep: Keep {
            _ebpf: ebpf,
            _links: links,
            sockets,
        },
        events,
        dropped,
    })
}

/// The setsockopt program, attached with a raw BPF link and pinned.
fn attach_setsockopt(ebpf: &mut Ebpf, cgroup: &File, pin_dir: Option<&Path>) -> Result<Link> {
    use std::os::fd::AsFd as _;
    let p: &mut CgroupSockopt = program(ebpf, "setsockopt")?
        .try_into()
        .context("program setsockopt has the wrong type")?;
    let prog = p.fd().context("the setsockopt program is not loaded")?;
    let link = rawlink::link_create(prog.as_fd(), cgroup.as_fd(), rawlink::BPF_CGROUP_SETSOCKOPT)
        .context("attaching setsockopt")?;
    if let Some(dir) = pin_dir {
        rawlink::pin(&link, &dir.join("setsockopt")).context("pinning the setsockopt link")?;
    }
    Ok(Link::Raw(link))
}

/// Loads (verifies) every program, in parallel: verification runs in the
/// `bpf()` syscall of the calling thread, so on several cores it overlaps,
/// and it is most of a sandbox's start-up time.
fn verify_all(ebpf: &mut Ebpf) -> Result<()> {
    use aya::programs::Program;
    std::thread::scope(|s| {
        let handles: Vec<_> = ebpf
            .programs_mut()
            .map(|(name, prog)| {
                let name = name.to_string();
                s.spawn(move || {
                    let r = match prog {
                        Program::CgroupSockAddr(p) => p.load(),
                        Program::CgroupSock(p) => p.load(),
                        Program::CgroupSkb(p) => p.load(),
                        Program::CgroupSockopt(p) => p.load(),
                        _ => return Err(anyhow!("program {name} has an unexpected type")),
                    };
                    r.with_context(|| format!("verifying program {name}"))
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("a BPF verification thread panicked"))??;
        }
        Ok(())
    })
}

/// Fills the policy maps. Runs before any program is attached, so the
/// sandbox never sees a partial policy.
fn write_policy(ebpf: &mut Ebpf, policy: &Policy) -> Result<()> {
    {
        let mut proxies: HashMap<&mut MapData, Endpoint, u8> =
            HashMap::try_from(map(ebpf, "PROXIES")?).context("PROXIES map")?;
        for e in policy.proxies.iter().take(policy.n_proxies as usize) {
            proxies.insert(e, 1, 0).context("PROXIES insert")?;
        }
    }
    {
        let mut ports: HashMap<&mut MapData, u16, u8> =
            HashMap::try_from(map(ebpf, "LOOPBACK_PORTS")?).context("LOOPBACK_PORTS map")?;
        for p in policy
            .loopback_ports
            .iter()
            .take(policy.n_loopback_ports as usize)
        {
            ports.insert(p, 1, 0).context("LOOPBACK_PORTS insert")?;
        }
    }
    let mut settings: Array<&mut MapData, Settings> =
        Array::try_from(map(ebpf, "SETTINGS")?).context("SETTINGS map")?;
    settings
        .set(
            0,
            Settings {
                loopback_any: policy.loopback_any,
            },
            0,
        )
        .context("SETTINGS set")?;
    Ok(())
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("BPF object has no {name} map"))
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("BPF object has no program {name}"))
}

fn fd_link<L>(link: L, name: &str) -> Result<FdLink>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).with_context(|| format!("{name} link is not an fd link"))
}

fn pin(link: FdLink, dir: Option<&Path>, name: &str) -> Result<Link> {
    match dir {
        Some(dir) => {
            let path: PathBuf = dir.join(name);
            Ok(Link::Pinned(link.pin(&path).with_context(|| {
                format!("pinning the {name} link at {}", path.display())
            })?))
        }
        None => Ok(Link::Unpinned(link)),
    }
}
