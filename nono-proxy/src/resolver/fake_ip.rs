//! Synthetic addresses for allowed names, one pair (IPv4, IPv6) per name.
//!
//! The IPv4 pool is 198.18.0.0/15 (RFC 2544, benchmarking: never routed on
//! the internet); the IPv6 pool is the ULA prefix `fd6e:6f6e:6f00::/64`
//! ("non" "o" in ASCII). Connections to either are always redirected to the
//! sandbox's proxy by the kernel hooks, so an address from the pool never
//! reaches a network even where a site uses the same range.
//!
//! An address is never given to a second name while the pool lives (a
//! cached answer must not come to mean another name); when the pool is
//! full, new names are refused ([`PoolFull`]) and only the sandbox itself,
//! which asked for them, is affected.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// First address of the IPv4 pool (198.18.0.0/15).
pub const V4_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Prefix length of the IPv4 pool.
pub const V4_PREFIX: u8 = 15;
/// The IPv6 pool's /64 prefix.
pub const V6_BASE: Ipv6Addr = Ipv6Addr::new(0xfd6e, 0x6f6e, 0x6f00, 0, 0, 0, 0, 0);
/// Prefix length of the IPv6 pool.
pub const V6_PREFIX: u8 = 64;
/// Names one pool holds by default: at most 253 bytes each, ~4 MiB at
/// worst for a sandbox that asks for names under an allowed wildcard
/// without end.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// The pool has no address left for another name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the synthetic address pool is full ({0} names)")]
pub struct PoolFull(pub usize);

/// The names given addresses so far, both ways.
#[derive(Debug)]
pub struct FakeIps {
    by_name: HashMap<String, u32>,
    names: Vec<String>,
    capacity: usize,
}

impl Default for FakeIps {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl FakeIps {
    /// An empty pool for at most `capacity` names (and never more than the
    /// IPv4 range holds, less its first and last address).
    pub fn new(capacity: usize) -> Self {
        let range = (1usize << (32 - V4_PREFIX)) - 2;
        Self {
            by_name: HashMap::new(),
            names: Vec::new(),
            capacity: capacity.min(range),
        }
    }

    /// The addresses of `name` (already normalised), assigned on first use.
    pub fn assign(&mut self, name: &str) -> Result<(Ipv4Addr, Ipv6Addr), PoolFull> {
        if let Some(&i) = self.by_name.get(name) {
            return Ok(addresses(i));
        }
        if self.names.len() >= self.capacity {
            return Err(PoolFull(self.capacity));
        }
        // Bounded by `capacity`, itself below 2^17: fits.
        let i = u32::try_from(self.names.len()).map_err(|_| PoolFull(self.capacity))?;
        self.names.push(name.to_string());
        self.by_name.insert(name.to_string(), i);
        Ok(addresses(i))
    }

    /// The name `ip` was given to, if it is a pool address in use.
    pub fn name_of(&self, ip: IpAddr) -> Option<&str> {
        let i = index_of(ip)?;
        self.names.get(usize::try_from(i).ok()?).map(String::as_str)
    }

    /// Names assigned so far.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No name assigned yet.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Whether `ip` lies in either pool (assigned or not): the kernel hooks
/// redirect all of it. (`nono_common::is_synthetic` says the same for the
/// kernel side; a test keeps the two in step.)
pub fn in_pool(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => u32::from(a) >> (32 - V4_PREFIX) == u32::from(V4_BASE) >> (32 - V4_PREFIX),
        IpAddr::V6(a) => {
            u128::from(a) >> (128 - V6_PREFIX) == u128::from(V6_BASE) >> (128 - V6_PREFIX)
        }
    }
}

/// Index `i` is address `base + 1 + i` in both pools (the first address of
/// the IPv4 range is skipped: some stacks treat a network address badly).
fn addresses(i: u32) -> (Ipv4Addr, Ipv6Addr) {
    let v4 = Ipv4Addr::from(u32::from(V4_BASE) + 1 + i);
    let v6 = Ipv6Addr::from(u128::from(V6_BASE) + 1 + u128::from(i));
    (v4, v6)
}

fn index_of(ip: IpAddr) -> Option<u32> {
    if !in_pool(ip) {
        return None;
    }
    let offset = match ip {
        IpAddr::V4(a) => u32::from(a) - u32::from(V4_BASE),
        IpAddr::V6(a) => u32::try_from(u128::from(a) - u128::from(V6_BASE)).ok()?,
    };
    offset.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_side_knows_the_same_pools() {
        let canonical = |ip: IpAddr| match ip {
            IpAddr::V4(a) => nono_common::canonical_v4(a.octets()),
            IpAddr::V6(a) => a.octets(),
        };
        let mut pool = FakeIps::new(4);
        let (v4, v6) = pool.assign("a.example").unwrap();
        let samples: [IpAddr; 8] = [
            v4.into(),
            v6.into(),
            Ipv4Addr::new(198, 19, 255, 255).into(),
            Ipv4Addr::new(198, 17, 255, 255).into(),
            Ipv4Addr::new(198, 20, 0, 0).into(),
            Ipv6Addr::new(0xfd6e, 0x6f6e, 0x6f00, 0, 9, 9, 9, 9).into(),
            Ipv6Addr::new(0xfd6e, 0x6f6e, 0x6f01, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::LOCALHOST.into(),
        ];
        for ip in samples {
            assert_eq!(
                in_pool(ip),
                nono_common::is_synthetic(&canonical(ip)),
                "{ip}"
            );
        }
    }

    #[test]
    fn same_name_same_addresses_and_back() {
        let mut p = FakeIps::new(10);
        let (a4, a6) = p.assign("a.example").unwrap();
        let (b4, b6) = p.assign("b.example").unwrap();
        assert_eq!(p.assign("a.example").unwrap(), (a4, a6));
        assert_ne!(a4, b4);
        assert_ne!(a6, b6);
        assert_eq!(a4, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(p.name_of(a4.into()), Some("a.example"));
        assert_eq!(p.name_of(b6.into()), Some("b.example"));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn unassigned_and_foreign_addresses_have_no_name() {
        let mut p = FakeIps::new(10);
        p.assign("a.example").unwrap();
        assert_eq!(p.name_of(Ipv4Addr::new(198, 18, 0, 0).into()), None);
        assert_eq!(p.name_of(Ipv4Addr::new(198, 18, 0, 2).into()), None);
        assert_eq!(p.name_of(Ipv4Addr::new(203, 0, 113, 1).into()), None);
        assert_eq!(p.name_of(Ipv6Addr::LOCALHOST.into()), None);
        // Beyond 2^32 in the IPv6 pool: not an index.
        let far = Ipv6Addr::new(0xfd6e, 0x6f6e, 0x6f00, 0, 0, 1, 0, 1);
        assert!(in_pool(far.into()));
        assert_eq!(p.name_of(far.into()), None);
    }

    #[test]
    fn a_full_pool_refuses_new_names_and_keeps_old_ones() {
        let mut p = FakeIps::new(2);
        let a = p.assign("a.example").unwrap();
        p.assign("b.example").unwrap();
        assert_eq!(p.assign("c.example"), Err(PoolFull(2)));
        assert_eq!(p.assign("a.example").unwrap(), a);
        assert_eq!(p.name_of(a.0.into()), Some("a.example"));
    }

    #[test]
    fn pool_bounds() {
        assert!(in_pool(Ipv4Addr::new(198, 19, 255, 255).into()));
        assert!(!in_pool(Ipv4Addr::new(198, 20, 0, 0).into()));
        assert!(!in_pool(Ipv4Addr::new(198, 17, 255, 255).into()));
        let p = FakeIps::new(usize::MAX);
        assert_eq!(p.capacity, (1 << 17) - 2);
        // The last index stays inside the range.
        let (v4, _) = addresses((1 << 17) - 3);
        assert_eq!(v4, Ipv4Addr::new(198, 19, 255, 254));
    }
}
