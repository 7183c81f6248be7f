//! The per-sandbox entries of the policy maps, keyed by the sandbox cgroup's
//! id (see `nono-ebpf`): written whole before the sandbox runs, removed when
//! it has ended.
//!
//! Order matters because the programs read these maps concurrently: on
//! insert the proxy and port entries go first and the `POLICIES` entry last,
//! so a cgroup is never judged by half a policy (until its `POLICIES` entry
//! exists it is denied everything); on removal `POLICIES` goes first.

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues};
use nono_common::{PortKey, ProxyKey, Settings};
use std::path::Path;

use nono_common::Policy;

/// Errors of opening and writing the policy maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The object or pin directory lacks a map (a build mismatch).
    #[error("the BPF object has no {0} map")]
    Missing(&'static str),
    /// A map could not be opened as its type, read or written.
    #[error("{what} ({map})")]
    Map {
        /// The map.
        map: &'static str,
        /// The operation.
        what: &'static str,
        #[source]
        source: MapError,
    },
    /// The number of possible CPUs (per-CPU values) could not be read.
    #[error("counting the possible CPUs")]
    Cpus(#[source] std::io::Error),
    /// A map could not be pinned.
    #[error("pinning the {map} map at {}", .path.display())]
    Pin {
        /// The map.
        map: &'static str,
        /// The pin.
        path: std::path::PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

type Result<T, E = MapsError> = std::result::Result<T, E>;

/// Names of the maps holding policy (pinned by the daemon under these names).
pub const POLICY_MAPS: [&str; 4] = ["POLICIES", "PROXIES", "LOOPBACK_PORTS", "SOCKETS"];

/// The policy maps of one loaded object (a sandbox's private copy, or the
/// daemon's shared one).
pub struct PolicyMaps {
    policies: HashMap<MapData, u64, Settings>,
    proxies: HashMap<MapData, ProxyKey, u8>,
    ports: HashMap<MapData, PortKey, u8>,
    sockets: PerCpuHashMap<MapData, u64, u64>,
    /// Possible CPUs (the per-CPU counter's width), read once: the daemon
    /// inserts at every sandbox start, and the count cannot change while
    /// the maps live.
    cpus: usize,
}

fn cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| MapsError::Cpus(e))
}

fn typed<T: TryFrom<Map, Error = MapError>>(map: Map, name: &'static str) -> Result<T> {
    T::try_from(map).map_err(|source| MapsError::Map {
        map: name,
        what: "opening",
        source,
    })
}

impl PolicyMaps {
    /// Takes the maps out of a freshly loaded object, pinning each into
    /// `pin_dir` under its name if given (the daemon's, so a restarted
    /// daemon finds them).
    pub fn take(ebpf: &mut aya::Ebpf, pin_dir: Option<&Path>) -> Result<Self> {
        let mut take = |name: &'static str| -> Result<Map> {
            let map = ebpf.take_map(name).ok_or(MapsError::Missing(name))?;
            if let Some(dir) = pin_dir {
                let path = dir.join(name);
                map.pin(&path).map_err(|source| MapsError::Pin {
                    map: name,
                    path,
                    source,
                })?;
            }
            Ok(map)
        };
        Ok(Self {
            policies: typed(take("POLICIES")?, "POLICIES")?,
            proxies: typed(take("PROXIES")?, "PROXIES")?,
            ports: typed(take("LOOPBACK_PORTS")?, "LOOPBACK_PORTS")?,
            sockets: typed(take("SOCKETS")?, "SOCKETS")?,
            cpus: cpus()?,
        })
    }

    /// Opens the maps pinned in `dir` (the daemon's, after a restart).
    pub fn from_pins(dir: &Path) -> Result<Self> {
        let open = |name: &'static str| -> Result<Map> {
            let data = MapData::from_pin(dir.join(name)).map_err(|source| MapsError::Map {
                map: name,
                what: "opening the pin",
                source,
            })?;
            Map::from_map_data(data).map_err(|source| MapsError::Map {
                map: name,
                what: "reading the pin's type",
                source,
            })
        };
        Ok(Self {
            policies: typed(open("POLICIES")?, "POLICIES")?,
            proxies: typed(open("PROXIES")?, "PROXIES")?,
            ports: typed(open("LOOPBACK_PORTS")?, "LOOPBACK_PORTS")?,
            sockets: typed(open("SOCKETS")?, "SOCKETS")?,
            cpus: cpus()?,
        })
    }

    /// Writes `policy` as the policy of the cgroup `cgroup` (its id), and a
    /// zeroed socket counter. On failure the entries written so far are
    /// removed again.
    pub fn insert(&mut self, cgroup: u64, policy: &Policy) -> Result<()> {
        let r = self.insert_entries(cgroup, policy);
        if r.is_err() {
            self.remove(cgroup, policy);
        }
        r
    }

    fn insert_entries(&mut self, cgroup: u64, policy: &Policy) -> Result<()> {
        let err = |map: &'static str| {
            move |source| MapsError::Map {
                map,
                what: "inserting",
                source,
            }
        };
        for e in proxies(policy) {
            self.proxies
                .insert(proxy_key(cgroup, e), 1, 0)
                .map_err(err("PROXIES"))?;
        }
        for &port in ports(policy) {
            self.ports
                .insert(port_key(cgroup, port), 1, 0)
                .map_err(err("LOOPBACK_PORTS"))?;
        }
        let zero = PerCpuValues::try_from(vec![0u64; self.cpus]).map_err(MapsError::Cpus)?;
        self.sockets
            .insert(cgroup, zero, 0)
            .map_err(err("SOCKETS"))?;
        self.policies
            .insert(
                cgroup,
                Settings {
                    loopback_any: policy.loopback_any,
                    audit: policy.audit,
                    redirects: policy.redirects,
                },
                0,
            )
            .map_err(err("POLICIES"))
    }

    /// Removes the cgroup's entries (missing ones are fine). After this the
    /// cgroup, and every socket it made, is denied everything.
    pub fn remove(&mut self, cgroup: u64, policy: &Policy) {
        let _ = self.policies.remove(&cgroup);
        for e in proxies(policy) {
            let _ = self.proxies.remove(&proxy_key(cgroup, e));
        }
        for &port in ports(policy) {
            let _ = self.ports.remove(&port_key(cgroup, port));
        }
        let _ = self.sockets.remove(&cgroup);
    }

    /// Removes every entry of the cgroup when its policy is not known (a
    /// leftover found after a crash): the keys are searched.
    pub fn remove_all_of(&mut self, cgroup: u64) {
        let _ = self.policies.remove(&cgroup);
        let proxies: Vec<ProxyKey> = self
            .proxies
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.cgroup == cgroup)
            .collect();
        for k in proxies {
            let _ = self.proxies.remove(&k);
        }
        let ports: Vec<PortKey> = self
            .ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.cgroup == cgroup)
            .collect();
        for k in ports {
            let _ = self.ports.remove(&k);
        }
        let _ = self.sockets.remove(&cgroup);
    }

    /// Copies every entry of `old` (another build's pinned maps of the same
    /// layout: opening them as these types checked the key and value sizes)
    /// into these maps: the daemon of a new build takes the live sandboxes
    /// over before its programs are attached and the old ones detached, so
    /// no sandbox is ever judged without its policy.
    pub fn copy_from(&mut self, old: &PolicyMaps) -> Result<usize> {
        let err = |map: &'static str| {
            move |source| MapsError::Map {
                map,
                what: "copying",
                source,
            }
        };
        for k in old.proxies.keys() {
            let k = k.map_err(err("PROXIES"))?;
            self.proxies.insert(k, 1, 0).map_err(err("PROXIES"))?;
        }
        for k in old.ports.keys() {
            let k = k.map_err(err("LOOPBACK_PORTS"))?;
            self.ports.insert(k, 1, 0).map_err(err("LOOPBACK_PORTS"))?;
        }
        for k in old.sockets.keys() {
            let k = k.map_err(err("SOCKETS"))?;
            if let Ok(v) = old.sockets.get(&k, 0) {
                self.sockets.insert(k, v, 0).map_err(err("SOCKETS"))?;
            }
        }
        let mut n = 0;
        for k in old.policies.keys() {
            let k = k.map_err(err("POLICIES"))?;
            let v = old.policies.get(&k, 0).map_err(err("POLICIES"))?;
            self.policies.insert(k, v, 0).map_err(err("POLICIES"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Whether the cgroup has a policy entry.
    pub fn has(&self, cgroup: u64) -> bool {
        self.policies.get(&cgroup, 0).is_ok()
    }

    /// Every cgroup id with a policy entry.
    pub fn cgroups(&self) -> Vec<u64> {
        self.policies.keys().filter_map(|k| k.ok()).collect()
    }

    /// How many inet sockets the cgroup's processes created, if known.
    pub fn sockets_created(&self, cgroup: u64) -> Option<u64> {
        self.sockets.get(&cgroup, 0).ok().map(|v| v.iter().sum())
    }
}

fn proxies(p: &Policy) -> &[nono_common::Endpoint] {
    &p.proxies[..(p.n_proxies as usize).min(p.proxies.len())]
}

fn ports(p: &Policy) -> &[u16] {
    &p.loopback_ports[..(p.n_loopback_ports as usize).min(p.loopback_ports.len())]
}

fn proxy_key(cgroup: u64, e: &nono_common::Endpoint) -> ProxyKey {
    ProxyKey {
        cgroup,
        endpoint: *e,
        _pad: [0; 4],
    }
}

fn port_key(cgroup: u64, port: u16) -> PortKey {
    PortKey {
        cgroup,
        port,
        _pad: [0; 6],
    }
}
