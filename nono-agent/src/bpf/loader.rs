//! Loading this sandbox's copy of the BPF object and attaching it.
//!
//! Every sandbox loads its own object instance, so its `POLICY` and `EVENTS`
//! maps belong to it alone: concurrent sandboxes cannot see or change each
//! other's policy, and no per-cgroup lookup is needed in the hot path.

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::{CgroupSock, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use nono_common::Policy;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The BPF object built by `build.rs` (see `cargo xtask build-ebpf`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nono"));

const SOCK_ADDR_PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
const SOCK_PROGRAMS: [&str; 1] = ["sock_create"];

/// Names of every program, which are also the pin file names.
pub fn program_names() -> impl Iterator<Item = &'static str> {
    SOCK_ADDR_PROGRAMS.into_iter().chain(SOCK_PROGRAMS)
}

/// What keeps the programs attached: the object (programs, maps) and the
/// link fds. Dropping it closes the fds; pinned links stay attached until
/// their pins are removed.
pub struct Keep {
    _ebpf: Ebpf,
    _links: Vec<Link>,
}

impl Keep {
    /// Number of attached links.
    pub fn link_count(&self) -> usize {
        self._links.len()
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
}

/// Sum of a per-CPU counter.
pub fn dropped_events(dropped: &PerCpuArray<MapData, u64>) -> u64 {
    dropped.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// Loads the object, writes `policy`, attaches every program to the cgroup at
/// `cgroup_dir` and pins each link into `pin_dir` (if given). Nothing is left
/// attached if this fails part-way: links are dropped with the error, and
/// pins are removed by the caller's teardown.
pub fn load_and_attach(cgroup_dir: &Path, policy: &Policy, pin_dir: Option<&Path>) -> Result<Attached> {
    // BTF is not needed: the programs use no CO-RE relocations. Skipping the
    // kernel BTF parse saves ~80 ms per sandbox.
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .load(OBJECT)
        .context("loading the BPF object into the kernel")?;

    {
        let map = ebpf
            .map_mut("POLICY")
            .ok_or_else(|| anyhow!("BPF object has no POLICY map"))?;
        let mut arr: Array<&mut MapData, Policy> = Array::try_from(map).context("POLICY map")?;
        arr.set(0, policy, 0).context("writing the sandbox policy")?;
    }

    let cgroup = File::open(cgroup_dir).with_context(|| format!("opening {}", cgroup_dir.display()))?;
    let mut links = Vec::new();
    for name in SOCK_ADDR_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?
            .try_into()
            .with_context(|| format!("program {name} has the wrong type"))?;
        prog.load().with_context(|| format!("verifying program {name}"))?;
        let id = prog
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", cgroup_dir.display()))?;
        let link = prog
            .take_link(id)
            .with_context(|| format!("taking the {name} link"))?;
        let link = FdLink::try_from(link).with_context(|| format!("{name} link is not an fd link"))?;
        links.push(pin(link, pin_dir, name)?);
    }
    for name in SOCK_PROGRAMS {
        let prog: &mut CgroupSock = program(&mut ebpf, name)?
            .try_into()
            .with_context(|| format!("program {name} has the wrong type"))?;
        prog.load().with_context(|| format!("verifying program {name}"))?;
        let id = prog
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", cgroup_dir.display()))?;
        let link = prog
            .take_link(id)
            .with_context(|| format!("taking the {name} link"))?;
        let link = FdLink::try_from(link).with_context(|| format!("{name} link is not an fd link"))?;
        links.push(pin(link, pin_dir, name)?);
    }

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

    Ok(Attached {
        keep: Keep {
            _ebpf: ebpf,
            _links: links,
        },
        events,
        dropped,
    })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("BPF object has no program {name}"))
}

fn pin(link: FdLink, dir: Option<&Path>, name: &str) -> Result<Link> {
    match dir {
        Some(dir) => {
            let path: PathBuf = dir.join(name);
            Ok(Link::Pinned(
                link.pin(&path)
                    .with_context(|| format!("pinning the {name} link at {}", path.display()))?,
            ))
        }
        None => Ok(Link::Unpinned(link)),
    }
}
