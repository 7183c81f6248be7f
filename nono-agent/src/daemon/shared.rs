//! The daemon's one copy of the BPF programs and maps: loaded, verified and
//! attached once to the parent cgroup of every daemon sandbox, pinned so
//! they outlive the daemon, and taken over by the next daemon.
//!
//! Layout: `<cgroup2>/<name>/` is the parent cgroup (sandboxes are its
//! children); `<bpffs>/<name>/<build>/links/*` and `.../maps/*` are the
//! pins, `<build>` identifying the BPF object, so a daemon of another build
//! never reads maps whose layout it does not know.

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::enforcer::bpf::bpffs::{self, BpffsError};
use crate::enforcer::bpf::loader::{self, LoadError};
use crate::enforcer::bpf::maps::{MapsError, PolicyMaps, POLICY_MAPS};
use crate::sandbox::cgroup::{self, CgroupError};

/// Errors of loading or taking over the shared programs.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The cgroup2 hierarchy or the parent cgroup.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The bpffs.
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    /// Loading, verifying or attaching.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The policy maps.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// A pin directory could not be created, listed or removed.
    #[error("{what} {}", .path.display())]
    Dir {
        /// The operation.
        what: &'static str,
        /// The directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pinned event map could not be opened.
    #[error("opening the pinned {name} map")]
    EventMap {
        /// The map.
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// Pins of another build, whose maps this build cannot read, hold live
    /// sandboxes.
    #[error(
        "programs of another nono-agent build (pins in {}) still confine {live} running \
         sandbox(es) and their maps have another layout ({why}); end them (or stop their \
         clients) before starting this build's daemon",
        .path.display()
    )]
    OtherBuildLive {
        /// Its pin directory.
        path: PathBuf,
        /// How many of its cgroups still hold processes.
        live: usize,
        /// Why its maps cannot be taken over.
        why: String,
    },
}

type Result<T, E = SharedError> = std::result::Result<T, E>;

/// The object's identity: FNV-1a over its bytes (a stable, dependency-free
/// fingerprint; it only has to tell builds apart, not resist forgery: the
/// pin directory is root's).
pub fn build_id() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in loader::object() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The loaded (or taken over) programs' maps, and where things live.
pub struct Shared {
    /// The per-sandbox policy entries.
    pub maps: PolicyMaps,
    /// Every sandbox's denial events (taken by the daemon's reader).
    pub events: Option<RingBuf<MapData>>,
    /// Per-CPU count of events the ring had no room for.
    pub dropped: PerCpuArray<MapData, u64>,
    /// Transparent mode's records of redirected sockets (all sandboxes').
    pub originals: loader::Originals,
    /// The parent cgroup of every sandbox.
    pub parent: PathBuf,
    /// The cgroup2 mount point.
    pub cgroup_root: PathBuf,
    /// The pin directory of this build.
    pub pin_dir: PathBuf,
    /// Whether pins of an earlier daemon were taken over.
    pub took_over: bool,
    /// Milliseconds spent loading and verifying (0 when taken over).
    pub load_ms: u128,
    /// Sandboxes whose policy was copied from another build's maps.
    pub migrated: usize,
}

const LINKS: &str = "links";
const MAPS: &str = "maps";
const EVENT_MAPS: [&str; 3] = ["EVENTS", "DROPPED", "ORIGINALS"];

/// Takes over this build's pins if a previous daemon left them, else loads,
/// attaches and pins afresh (removing pins of other builds that no longer
/// confine anything).
pub fn open(name: &str, build: &str) -> Result<Shared> {
    let cgroup_root = cgroup::discover_root()?;
    let parent = cgroup_root.join(name);
    crate::util::ensure_dir(&parent, Some(0o755)).map_err(CgroupError::from)?;
    let bpffs_root = bpffs::ensure_mounted()?;
    let base = bpffs_root.join(name);
    crate::util::ensure_dir(&base, Some(0o700)).map_err(BpffsError::from)?;
    let pin_dir = base.join(build);

    if complete(&pin_dir) {
        let mut maps = PolicyMaps::from_pins(&pin_dir.join(MAPS))?;
        let (events, dropped) = event_maps_from_pins(&pin_dir.join(MAPS))?;
        let originals = originals_from_pin(&pin_dir.join(MAPS))?;
        // An upgrade that died between attaching our programs and detaching
        // the old build's: finish it (our maps may miss entries the old
        // daemon made after the copy; they are copied again).
        let (old, _) = take_over_other_builds(&base, &pin_dir, &parent, &mut maps)?;
        for o in old {
            remove_dir(&o)?;
        }
        return Ok(Shared {
            maps,
            events: Some(events),
            dropped,
            originals,
            parent,
            cgroup_root,
            pin_dir,
            took_over: true,
            load_ms: 0,
            migrated: 0,
        });
    }
    // Partial pins (a daemon died while pinning): start clean. Nothing can
    // be confined by them yet: sandboxes are created only after all pins.
    remove_dir(&pin_dir)?;
    let start = std::time::Instant::now();
    let mut ebpf = loader::load_fast(loader::Capacity::Daemon)?;
    let load_ms = start.elapsed().as_millis();
    for d in [LINKS, MAPS] {
        let p = pin_dir.join(d);
        fs::create_dir_all(&p).map_err(|source| SharedError::Dir {
            what: "creating",
            path: p.clone(),
            source,
        })?;
    }
    let mut maps = PolicyMaps::take(&mut ebpf, Some(&pin_dir.join(MAPS)))?;
    let (events, dropped) = loader::take_events(&mut ebpf, Some(&pin_dir.join(MAPS)))?;
    let originals = loader::take_originals(&mut ebpf, Some(&pin_dir.join(MAPS)))?;
    // Another build's sandboxes (an upgrade): their entries are copied in
    // before our programs are attached, and its programs detached only
    // after; in between both sets judge (both must allow), never neither.
    let (old, migrated) = take_over_other_builds(&base, &pin_dir, &parent, &mut maps)?;
    // Links last: once attached, every process under `parent` without an
    // entry is denied everything.
    let links = loader::attach(&mut ebpf, &parent, Some(&pin_dir.join(LINKS)), true)?;
    drop(links);
    drop(ebpf);
    for o in old {
        remove_dir(&o)?;
    }
    Ok(Shared {
        maps,
        events: Some(events),
        dropped,
        originals,
        parent,
        cgroup_root,
        pin_dir,
        took_over: false,
        load_ms,
        migrated,
    })
}

/// Removes a stopped daemon's whole state: every sandbox cgroup under
/// `<cgroup2>/<name>` is killed and removed first (deepest first, sockets
/// destroyed), and only then are the pins removed (which detaches the
/// programs) and the records; nothing is ever left running unconfined.
/// Returns how many sandbox cgroups were removed.
pub fn remove_all(name: &str) -> Result<usize> {
    let root = cgroup::discover_root()?;
    let parent = root.join(name);
    let mut n = 0;
    if parent.exists() {
        let rd = fs::read_dir(&parent).map_err(|source| SharedError::Dir {
            what: "listing",
            path: parent.clone(),
            source,
        })?;
        for e in rd.filter_map(|e| e.ok()) {
            if e.path().is_dir() {
                cgroup::Cgroup::existing(e.path())
                    .destroy(std::time::Duration::from_secs(10), || {
                        cgroup::Sockets::Destroy
                    })?;
                n += 1;
            }
        }
    }
    for m in bpffs::mounts()? {
        remove_dir(&m.join(name))?;
    }
    remove_dir(&Path::new(crate::sandbox::registry::STATE_DIR).join(name))?;
    if parent.exists() {
        fs::remove_dir(&parent).map_err(|source| SharedError::Dir {
            what: "removing",
            path: parent.clone(),
            source,
        })?;
    }
    Ok(n)
}

/// Every map and every link is pinned.
fn complete(dir: &Path) -> bool {
    let maps = dir.join(MAPS);
    let links = dir.join(LINKS);
    POLICY_MAPS
        .iter()
        .chain(EVENT_MAPS.iter())
        .all(|m| maps.join(m).exists())
        && loader::PROGRAMS.iter().all(|p| links.join(p).exists())
}

fn originals_from_pin(dir: &Path) -> Result<loader::Originals> {
    const NAME: &str = "ORIGINALS";
    let d = MapData::from_pin(dir.join(NAME))
        .map_err(|source| SharedError::EventMap { name: NAME, source })?;
    let m = Map::from_map_data(d).map_err(|source| SharedError::EventMap { name: NAME, source })?;
    let map = aya::maps::HashMap::try_from(m)
        .map_err(|source| SharedError::EventMap { name: NAME, source })?;
    Ok(std::sync::Arc::new(map))
}

fn event_maps_from_pins(dir: &Path) -> Result<(RingBuf<MapData>, PerCpuArray<MapData, u64>)> {
    let open = |name: &'static str| -> Result<Map> {
        let d = MapData::from_pin(dir.join(name))
            .map_err(|source| SharedError::EventMap { name, source })?;
        Map::from_map_data(d).map_err(|source| SharedError::EventMap { name, source })
    };
    let events = RingBuf::try_from(open("EVENTS")?).map_err(|source| SharedError::EventMap {
        name: "EVENTS",
        source,
    })?;
    let dropped =
        PerCpuArray::try_from(open("DROPPED")?).map_err(|source| SharedError::EventMap {
            name: "DROPPED",
            source,
        })?;
    Ok((events, dropped))
}

/// Pins of other builds: their policy entries are copied into `maps`
/// (when their layout is ours), and their directories returned for removal
/// once our programs are attached. Pins whose maps cannot be read are
/// returned too if no sandbox is alive; with live sandboxes they refuse the
/// start (their processes would lose their policy).
fn take_over_other_builds(
    base: &Path,
    ours: &Path,
    parent: &Path,
    maps: &mut PolicyMaps,
) -> Result<(Vec<PathBuf>, usize)> {
    let list = fs::read_dir(base).map_err(|source| SharedError::Dir {
        what: "listing",
        path: base.to_path_buf(),
        source,
    })?;
    let others: Vec<PathBuf> = list
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p != ours)
        .collect();
    let mut migrated = 0;
    for o in &others {
        match PolicyMaps::from_pins(&o.join(MAPS)) {
            Ok(old) => migrated += maps.copy_from(&old)?,
            Err(e) => {
                let live = live_sandboxes(parent);
                if live > 0 {
                    return Err(SharedError::OtherBuildLive {
                        path: o.clone(),
                        live,
                        why: crate::util::chain(&e),
                    });
                }
            }
        }
    }
    Ok((others, migrated))
}

/// Sandbox cgroups under `parent` that hold processes.
fn live_sandboxes(parent: &Path) -> usize {
    fs::read_dir(parent)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter(|e| cgroup::populated(&e.path()).unwrap_or(true))
                .count()
        })
        .unwrap_or(0)
}

fn remove_dir(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SharedError::Dir {
            what: "removing",
            path: p.to_path_buf(),
            source,
        }),
    }
}
