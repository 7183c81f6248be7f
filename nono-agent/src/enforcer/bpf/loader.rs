//! Loading the BPF object, verifying its programs and attaching them to a
//! cgroup.
//!
//! Two users: `exec` as root loads a private copy per sandbox
//! ([`load_and_attach_fast`]), writes the one policy entry of its cgroup and
//! attaches the programs to that cgroup; the daemon loads one copy once
//! ([`load_fast`]), attaches it to its parent cgroup ([`attach`]) and adds
//! an entry per sandbox (see `super::maps`).

use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::links::{CgroupAttachMode, FdLink, LinkError, PinnedLink};
use aya::programs::{
    CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockopt, ProgramError,
};
use aya::{Ebpf, EbpfError, EbpfLoader};
use nono_common::Policy;

use super::maps::{MapsError, PolicyMaps};
use super::rawlink;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Errors of loading the BPF object and attaching its programs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The helper thread of [`load_and_attach_fast`] panicked.
    #[error("the BPF loader thread panicked")]
    LoaderPanicked,
    /// The kernel refused the object (maps or BTF).
    #[error("loading the BPF object into the kernel")]
    Load(#[source] Box<EbpfError>),
    /// The policy maps could not be opened or filled.
    #[error("writing the sandbox policy")]
    WritePolicy(#[source] MapsError),
    /// A map could not be pinned.
    #[error("pinning the {name} map")]
    PinMap {
        /// The map.
        name: &'static str,
        #[source]
        source: aya::pin::PinError,
    },
    /// The object lacks a map this agent needs (a build mismatch).
    #[error("BPF object has no {name} map")]
    NoMap {
        /// The map.
        name: &'static str,
    },
    /// A map could not be opened as its type, or written.
    #[error("{what}")]
    Map {
        /// The map and the operation (`PROXIES insert`).
        what: &'static str,
        #[source]
        source: MapError,
    },
    /// The object lacks a program this agent needs (a build mismatch).
    #[error("BPF object has no program {name}")]
    NoProgram {
        /// The program.
        name: String,
    },
    /// A program of the object has a type this agent does not load.
    #[error("program {name} has an unexpected type")]
    UnexpectedProgram {
        /// The program.
        name: String,
    },
    /// The verifier rejected a program.
    #[error("verifying program {name}")]
    Verify {
        /// The program.
        name: String,
        #[source]
        source: Box<ProgramError>,
    },
    /// A verification thread panicked.
    #[error("a BPF verification thread panicked")]
    VerifierPanicked,
    /// The sandbox's cgroup directory could not be opened.
    #[error("opening {}", .path.display())]
    OpenCgroup {
        /// The cgroup directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A program is not of the type it is attached as.
    #[error("program {name} has the wrong type")]
    WrongType {
        /// The program.
        name: String,
        #[source]
        source: Box<ProgramError>,
    },
    /// A program could not be attached to the cgroup.
    #[error("attaching {name} to {}", .cgroup.display())]
    Attach {
        /// The program.
        name: String,
        /// The cgroup directory.
        cgroup: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    /// aya would not hand over an attached program's link.
    #[error("taking the {name} link")]
    TakeLink {
        /// The program.
        name: String,
        #[source]
        source: Box<ProgramError>,
    },
    /// A link could not be made an fd link (needed to pin it).
    #[error("{name} link is not an fd link")]
    NotFdLink {
        /// The program.
        name: String,
        #[source]
        source: LinkError,
    },
    /// A link could not be pinned in the sandbox's pin directory.
    #[error("pinning the {name} link at {}", .path.display())]
    Pin {
        /// The program.
        name: String,
        /// The pin.
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    /// A program to attach with a raw link has no fd (it was not loaded).
    #[error("the {name} program is not loaded")]
    NotLoaded {
        /// The program.
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// The raw `BPF_LINK_CREATE` failed.
    #[error("attaching {name}")]
    RawAttach {
        /// The program.
        name: &'static str,
        #[source]
        source: rawlink::Error,
    },
    /// A raw link could not be pinned.
    #[error("pinning the {name} link")]
    RawPin {
        /// The program.
        name: &'static str,
        #[source]
        source: rawlink::Error,
    },
}

type Result<T, E = LoadError> = std::result::Result<T, E>;

/// The BPF object built by `build.rs` (see `cargo xtask build-ebpf`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nono"));

const SOCK_ADDR_PROGRAMS: [&str; 10] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "bind4",
    "bind6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];
const SOCK_PROGRAMS: [&str; 1] = ["sock_create"];

/// The programs only transparent mode needs (they show a redirected
/// socket the address it dialled): a private copy without redirects
/// neither verifies nor attaches them, which keeps them off every
/// sandbox's start-up; the daemon always has them.
const RESTORE_PROGRAMS: [&str; 4] = ["recvmsg4", "recvmsg6", "getpeername4", "getpeername6"];

/// Every program, by the name its link is pinned under.
pub const PROGRAMS: [&str; 14] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "bind4",
    "bind6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
    "sock_create",
    "egress",
    "ingress",
    "setsockopt",
];

/// The embedded BPF object's bytes.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// What keeps the programs attached: the object (programs, maps) and the
/// link fds. Dropping it closes the fds; pinned links stay attached until
/// their pins are removed.
pub struct Keep {
    _ebpf: Ebpf,
    _links: Vec<Link>,
    maps: PolicyMaps,
    cgroup_id: u64,
}

/// Transparent mode's records of where redirected sockets dialled
/// (`ORIGINALS`, by socket cookie), shared with the proxy.
pub type Originals = std::sync::Arc<aya::maps::HashMap<MapData, u64, nono_common::Original>>;

impl Keep {
    /// Number of attached links.
    pub fn link_count(&self) -> usize {
        self._links.len()
    }

    /// How many inet sockets the sandbox created, if the count can be read.
    pub fn sockets_created(&self) -> Option<u64> {
        self.maps.sockets_created(self.cgroup_id)
    }
}

/// A loaded object whose programs are attached to one cgroup.
pub struct Attached {
    /// Programs, maps and links.
    pub keep: Keep,
    /// Where redirected sockets dialled (transparent mode).
    pub originals: Originals,
    /// Denial events.
    pub events: RingBuf<MapData>,
    /// Per-CPU count of events the ring buffer had no room for.
    pub dropped: PerCpuArray<MapData, u64>,
}

/// One attached program's link, held for its `Drop`.
#[allow(dead_code)] // held only for their Drop
pub enum Link {
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
    cgroup_id: u64,
    policy: &Policy,
    pin_dir: Option<&Path>,
) -> Result<Attached> {
    let cgroup_dir = cgroup_dir.to_path_buf();
    let pin_dir = pin_dir.map(Path::to_path_buf);
    let policy = *policy;
    std::thread::scope(|s| {
        s.spawn(move || {
            hide_kernel_btf_from_this_thread();
            load_and_attach(&cgroup_dir, cgroup_id, &policy, pin_dir.as_deref())
        })
        .join()
        .map_err(|_| LoadError::LoaderPanicked)?
    })
}

/// How many entries the policy maps hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// One sandbox (a private copy per sandbox): the object's own sizes.
    One,
    /// The daemon's: every sandbox of the host.
    Daemon,
}

/// [`load`] on a helper thread that cannot see the kernel BTF (see
/// [`load_and_attach_fast`]).
pub fn load_fast(capacity: Capacity) -> Result<Ebpf> {
    std::thread::scope(|s| {
        s.spawn(move || {
            hide_kernel_btf_from_this_thread();
            load(capacity, true)
        })
        .join()
        .map_err(|_| LoadError::LoaderPanicked)?
    })
}

/// Loads the object with maps sized for `capacity` and verifies every
/// program (`restore`: the transparent-mode ones too, see
/// [`RESTORE_PROGRAMS`]); nothing is attached yet.
pub fn load(capacity: Capacity, restore: bool) -> Result<Ebpf> {
    // BTF is not needed: the programs use no CO-RE relocations. Skipping the
    // kernel BTF parse saves ~80 ms per load.
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    if capacity == Capacity::Daemon {
        use nono_common::{DAEMON_PORT_ENTRIES, DAEMON_PROXY_ENTRIES, MAX_SANDBOXES};
        loader
            .map_max_entries("POLICIES", MAX_SANDBOXES as u32)
            .map_max_entries("SOCKETS", MAX_SANDBOXES as u32)
            .map_max_entries("PROXIES", DAEMON_PROXY_ENTRIES as u32)
            .map_max_entries("LOOPBACK_PORTS", DAEMON_PORT_ENTRIES as u32)
            .map_max_entries("ORIGINALS", nono_common::DAEMON_ORIGINAL_ENTRIES as u32);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| LoadError::Load(Box::new(e)))?;
    verify_all(&mut ebpf, restore)?;
    Ok(ebpf)
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

/// Loads a private copy of the object, writes `policy` as the entry of the
/// cgroup `cgroup_id` (at `cgroup_dir`), attaches every program to that
/// cgroup and pins each link into `pin_dir` (if given). Nothing is left
/// attached if this fails part-way: links are dropped with the error, and
/// pins are removed by the caller's teardown.
pub fn load_and_attach(
    cgroup_dir: &Path,
    cgroup_id: u64,
    policy: &Policy,
    pin_dir: Option<&Path>,
) -> Result<Attached> {
    let restore = policy.redirects.is_on();
    let mut ebpf = load(Capacity::One, restore)?;
    let mut maps = PolicyMaps::take(&mut ebpf, None).map_err(LoadError::WritePolicy)?;
    maps.insert(cgroup_id, policy)
        .map_err(LoadError::WritePolicy)?;
    let links = attach(&mut ebpf, cgroup_dir, pin_dir, restore)?;
    let (events, dropped) = take_events(&mut ebpf, None)?;
    let originals = take_originals(&mut ebpf, None)?;
    Ok(Attached {
        originals,
        keep: Keep {
            _ebpf: ebpf,
            _links: links,
            maps,
            cgroup_id,
        },
        events,
        dropped,
    })
}

/// Takes the event ring and its drop counter out of the object, pinning
/// them into `pin_dir` if given.
pub fn take_events(
    ebpf: &mut Ebpf,
    pin_dir: Option<&Path>,
) -> Result<(RingBuf<MapData>, PerCpuArray<MapData, u64>)> {
    let mut take = |name: &'static str| -> Result<aya::maps::Map> {
        let m = ebpf.take_map(name).ok_or(LoadError::NoMap { name })?;
        if let Some(dir) = pin_dir {
            m.pin(dir.join(name))
                .map_err(|source| LoadError::PinMap { name, source })?;
        }
        Ok(m)
    };
    let events = RingBuf::try_from(take("EVENTS")?).map_err(map_err("EVENTS map"))?;
    let dropped = PerCpuArray::try_from(take("DROPPED")?).map_err(map_err("DROPPED map"))?;
    Ok((events, dropped))
}

/// Takes the `ORIGINALS` map out of the object, pinning it into `pin_dir`
/// if given (the daemon's: it answers its users' lookups).
pub fn take_originals(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<Originals> {
    const NAME: &str = "ORIGINALS";
    let m = ebpf.take_map(NAME).ok_or(LoadError::NoMap { name: NAME })?;
    if let Some(dir) = pin_dir {
        m.pin(dir.join(NAME))
            .map_err(|source| LoadError::PinMap { name: NAME, source })?;
    }
    let map = aya::maps::HashMap::try_from(m).map_err(map_err("ORIGINALS map"))?;
    Ok(std::sync::Arc::new(map))
}

/// Attaches every program of a loaded object to the cgroup at `cgroup_dir`
/// with BPF links, pinning each into `pin_dir` (if given); the
/// transparent-mode ones only with `restore`.
pub fn attach(
    ebpf: &mut Ebpf,
    cgroup_dir: &Path,
    pin_dir: Option<&Path>,
    restore: bool,
) -> Result<Vec<Link>> {
    let ebpf = &mut *ebpf;
    let cgroup = File::open(cgroup_dir).map_err(|source| LoadError::OpenCgroup {
        path: cgroup_dir.to_path_buf(),
        source,
    })?;
    let mut links = Vec::new();
    // Each program type has its own attach signature and link type; the
    // rest (take the link, make it an fd link, pin it) is the same.
    macro_rules! attach {
        ($ty:ty, $name:expr, |$p:ident| $attach:expr) => {{
            let name: &str = $name;
            let $p: &mut $ty =
                program(ebpf, name)?
                    .try_into()
                    .map_err(|source| LoadError::WrongType {
                        name: name.to_string(),
                        source: Box::new(source),
                    })?;
            let id = $attach.map_err(|source| LoadError::Attach {
                name: name.to_string(),
                cgroup: cgroup_dir.to_path_buf(),
                source: Box::new(source),
            })?;
            $p.take_link(id).map_err(|source| LoadError::TakeLink {
                name: name.to_string(),
                source: Box::new(source),
            })?
        }};
    }
    for name in SOCK_ADDR_PROGRAMS {
        if !restore && RESTORE_PROGRAMS.contains(&name) {
            continue;
        }
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
    links.push(attach_setsockopt(ebpf, &cgroup, pin_dir)?);
    Ok(links)
}

/// The setsockopt program, attached with a raw BPF link and pinned.
fn attach_setsockopt(ebpf: &mut Ebpf, cgroup: &File, pin_dir: Option<&Path>) -> Result<Link> {
    use std::os::fd::AsFd as _;
    const NAME: &str = "setsockopt";
    let p: &mut CgroupSockopt =
        program(ebpf, NAME)?
            .try_into()
            .map_err(|source| LoadError::WrongType {
                name: NAME.to_string(),
                source: Box::new(source),
            })?;
    let prog = p.fd().map_err(|source| LoadError::NotLoaded {
        name: NAME,
        source: Box::new(source),
    })?;
    let link = rawlink::link_create(prog.as_fd(), cgroup.as_fd(), rawlink::BPF_CGROUP_SETSOCKOPT)
        .map_err(|source| LoadError::RawAttach { name: NAME, source })?;
    if let Some(dir) = pin_dir {
        rawlink::pin(&link, &dir.join(NAME))
            .map_err(|source| LoadError::RawPin { name: NAME, source })?;
    }
    Ok(Link::Raw(link))
}

/// Loads (verifies) every program, in parallel: verification runs in the
/// `bpf()` syscall of the calling thread, so on several cores it overlaps,
/// and it is most of a sandbox's start-up time.
fn verify_all(ebpf: &mut Ebpf, restore: bool) -> Result<()> {
    use aya::programs::Program;
    std::thread::scope(|s| {
        let handles: Vec<_> = ebpf
            .programs_mut()
            .filter(|(name, _)| restore || !RESTORE_PROGRAMS.contains(name))
            .map(|(name, prog)| {
                let name = name.to_string();
                s.spawn(move || {
                    let r = match prog {
                        Program::CgroupSockAddr(p) => p.load(),
                        Program::CgroupSock(p) => p.load(),
                        Program::CgroupSkb(p) => p.load(),
                        Program::CgroupSockopt(p) => p.load(),
                        _ => return Err(LoadError::UnexpectedProgram { name }),
                    };
                    r.map_err(|source| LoadError::Verify {
                        name,
                        source: Box::new(source),
                    })
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| LoadError::VerifierPanicked)??;
        }
        Ok(())
    })
}

/// Wraps a map error with what was being done to which map.
fn map_err(what: &'static str) -> impl FnOnce(MapError) -> LoadError {
    move |source| LoadError::Map { what, source }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| LoadError::NoProgram {
        name: name.to_string(),
    })
}

fn fd_link<L>(link: L, name: &str) -> Result<FdLink>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(|source| LoadError::NotFdLink {
        name: name.to_string(),
        source,
    })
}

fn pin(link: FdLink, dir: Option<&Path>, name: &str) -> Result<Link> {
    match dir {
        Some(dir) => {
            let path: PathBuf = dir.join(name);
            let pinned = link.pin(&path).map_err(|source| LoadError::Pin {
                name: name.to_string(),
                path,
                source,
            })?;
            Ok(Link::Pinned(pinned))
        }
        None => Ok(Link::Unpinned(link)),
    }
}
