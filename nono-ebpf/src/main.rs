//! cgroup sock_addr / sock / skb programs enforcing sandboxes' network
//! policies.
//!
//! Every policy map is keyed by the id of the sandbox's (leaf) cgroup: the
//! current task's for the socket-call hooks, the socket's for the packet
//! hooks. The same object serves both ways of running: `exec` as root loads
//! a private copy per sandbox and attaches it to that sandbox's cgroup; the
//! daemon loads one copy once, attaches it to its parent cgroup, and adds an
//! entry per sandbox. A cgroup without an entry (a sandbox whose entry is
//! gone, a sub-cgroup someone made inside a sandbox, a socket used by a task
//! outside) finds nothing and is denied everything. Every decision is
//! delegated to `nono_common`, the same code and tables the seccomp filter
//! and supervisor are built from.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    bindings::{bpf_sock, bpf_sock_addr, bpf_sockopt},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_socket_cookie, bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, map},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockoptContext},
};
use nono_common::{
    audit_verdict, cgroup_hook_sees, consts, decide_bind, decide_connect, decide_egress,
    decide_ingress, decide_redirect, decide_sendmsg, decide_setsockopt, decide_socket,
    device_name_is_loopback, is_listener, is_quiet_probe, refused_option, sockopt, Decision,
    DenyEvent, Dest, Endpoint, Hook, OptionContext, OptionRule, Original, PolicyView, PortKey,
    ProxyKey, Reason, Redirects, Settings, Transport, Verdict, AUDIT_ON, EVENT_DENY,
    EVENT_WOULD_DENY, LOOPBACK_ANY, MAX_LOOPBACK_PORTS, MAX_PROXY_ENDPOINTS,
};

// The sizes below fit one sandbox (a private copy per sandbox); the daemon
// sets larger ones at load time (`nono_common::DaemonCapacity`). A hash
// map's bucket array is allocated at creation whatever its fill, so the
// sizes are what each copy costs in kernel memory. Entries are allocated on
// insert (`BPF_F_NO_PREALLOC`).

/// Each sandbox's scalar settings, by its cgroup id. No entry: denied
/// everything.
#[map]
static POLICIES: HashMap<u64, Settings> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Proxy endpoints (canonical address + port) each sandbox may reach.
#[map]
static PROXIES: HashMap<ProxyKey, u8> =
    HashMap::with_max_entries(MAX_PROXY_ENDPOINTS as u32, BPF_F_NO_PREALLOC);

/// Loopback ports each sandbox may reach when its `loopback_any` is off.
#[map]
static LOOPBACK_PORTS: HashMap<PortKey, u8> =
    HashMap::with_max_entries(MAX_LOOPBACK_PORTS as u32, BPF_F_NO_PREALLOC);

/// Transparent mode: where each redirected socket really dialled, by
/// socket cookie (cookies are never reused, so a stale entry can never be
/// read for another socket). The proxy looks its client up here; the
/// `getpeername`/`recvmsg` hooks show the address to the socket. An LRU
/// map: a sandbox opening more redirected sockets than it holds evicts the
/// oldest records, whose connections the proxy then refuses (no original
/// destination), so a flood costs only the flooder's own connections
/// (and, under the daemon, other sandboxes' oldest ones: see the README).
#[map]
static ORIGINALS: LruHashMap<u64, Original> = LruHashMap::with_max_entries(4096, 0);

/// The policy of one sandbox as the BPF side sees it: hash-map lookups,
/// which the verifier checks in constant time (loops over arrays cost it
/// tens of milliseconds per program, which every load would pay).
struct MapPolicy<'a> {
    cgroup: u64,
    settings: &'a Settings,
}

impl MapPolicy<'_> {
    /// The sandbox runs in audit mode.
    #[inline(always)]
    fn audit(&self) -> bool {
        self.settings.audit == AUDIT_ON
    }
}

impl PolicyView for MapPolicy<'_> {
    #[inline(always)]
    fn loopback_any(&self) -> bool {
        self.settings.loopback_any == LOOPBACK_ANY
    }

    #[inline(always)]
    fn loopback_port_allowed(&self, port: u16) -> bool {
        let key = PortKey {
            cgroup: self.cgroup,
            port,
            _pad: [0; 6],
        };
        // SAFETY: the value is only tested for presence, never read, so a
        // concurrent update of the element cannot be observed half-written.
        unsafe { LOOPBACK_PORTS.get(key).is_some() }
    }

    #[inline(always)]
    fn is_proxy(&self, endpoint: &Endpoint) -> bool {
        let key = ProxyKey {
            cgroup: self.cgroup,
            endpoint: *endpoint,
            _pad: [0; 4],
        };
        // SAFETY: as above, presence only.
        unsafe { PROXIES.get(key).is_some() }
    }

    #[inline(always)]
    fn redirects(&self) -> Redirects {
        self.settings.redirects
    }
}

/// Denial events for the agent. When the buffer is full, events are dropped
/// (and counted in `DROPPED`) but the denial itself always happens.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per sandbox cgroup and CPU, the inet sockets the sandbox created: at
/// teardown the agent looks for sockets to destroy only if there were any
/// (a dump of the host's socket tables costs milliseconds). The agent
/// creates the entry with the policy; without one nothing is counted and
/// teardown looks anyway.
#[map]
static SOCKETS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Element 0 counts, per CPU, events that could not be written to `EVENTS`
/// (per CPU so the count needs no atomic read-modify-write).
#[map]
static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    on_addr4(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    on_addr4(&ctx, Hook::Sendmsg4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    on_addr6(&ctx, Hook::Connect6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    on_addr6(&ctx, Hook::Sendmsg6)
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    on_addr4(&ctx, Hook::Bind4)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    on_addr6(&ctx, Hook::Bind6)
}

/// The shared socket table (`nono_common::ALLOWED_SOCKETS`). The kernel
/// runs this hook for inet and inet6 sockets only
/// (`nono_common::cgroup_hook_sees`); the seccomp filter refuses the
/// families the table does not list.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_sock` context; the verifier
    // rewrites these narrow loads into accesses of the real socket.
    let (family, ty, proto) = unsafe {
        let s: *const bpf_sock = ctx.sock;
        ((*s).family, (*s).type_, (*s).protocol)
    };
    let d = decide_socket(family, ty, proto);
    // SAFETY: helper without preconditions in cgroup programs.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if d.allow {
        if cgroup_hook_sees(family) {
            if let Some(p) = SOCKETS.get_ptr_mut(cgroup) {
                // SAFETY: the entry exists and this is this CPU's own slot.
                unsafe { *p += 1 };
            }
        }
        return ALLOW;
    }
    emit(
        cgroup,
        Hook::SockCreate,
        family,
        ty,
        proto,
        &Dest {
            addr: [0; 16],
            port: 0,
        },
        d.reason,
    );
    DENY
}

#[inline(always)]
fn on_addr4(ctx: &SockAddrContext, hook: Hook) -> i32 {
    // SAFETY: valid context from the kernel; `user_ip4` and `user_port` are
    // readable in connect4/sendmsg4/bind4 with 4-byte loads.
    let (ip, port, family, ty, proto) = unsafe {
        let s: *const bpf_sock_addr = ctx.sock_addr;
        (
            (*s).user_ip4,
            (*s).user_port,
            (*s).family,
            (*s).type_,
            (*s).protocol,
        )
    };
    // `user_ip4` holds the address in network order; on this little-endian
    // target its in-memory bytes are the octets in order.
    let dest = Dest::v4(ip.to_ne_bytes(), u16::from_be(port as u16));
    match judge(hook, family, ty, proto, &dest) {
        Judged::Verdict(v) => v,
        Judged::Redirect { to, cgroup } => {
            remember(ctx, cgroup, &dest);
            write_ip4(ctx, &to);
            ALLOW
        }
    }
}

/// The address and port of a v6 hook's context (`user_ip6[0..4]` and
/// `user_port`, readable with 4-byte loads in every v6 sock_addr hook).
#[inline(always)]
fn user_dest6(ctx: &SockAddrContext) -> Dest {
    // SAFETY: valid context from the kernel; 4-byte loads of fields every
    // v6 sock_addr hook may read.
    let (w, port) = unsafe {
        let s: *const bpf_sock_addr = ctx.sock_addr;
        (
            [
                (*s).user_ip6[0],
                (*s).user_ip6[1],
                (*s).user_ip6[2],
                (*s).user_ip6[3],
            ],
            (*s).user_port,
        )
    };
    let mut o = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        o[i * 4] = b[0];
        o[i * 4 + 1] = b[1];
        o[i * 4 + 2] = b[2];
        o[i * 4 + 3] = b[3];
        i += 1;
    }
    Dest::v6(o, u16::from_be(port as u16))
}

#[inline(always)]
fn on_addr6(ctx: &SockAddrContext, hook: Hook) -> i32 {
    // SAFETY: valid context; family, type and protocol are readable in
    // connect6/sendmsg6/bind6.
    let (family, ty, proto) = unsafe {
        let s: *const bpf_sock_addr = ctx.sock_addr;
        ((*s).family, (*s).type_, (*s).protocol)
    };
    let dest = user_dest6(ctx);
    match judge(hook, family, ty, proto, &dest) {
        Judged::Verdict(v) => v,
        Judged::Redirect { to, cgroup } => {
            remember(ctx, cgroup, &dest);
            write_ip6(ctx, &to);
            ALLOW
        }
    }
}

/// Writes a v4 destination (canonical, v4-mapped) into a v4 hook's
/// `user_ip4` / `user_port`.
#[inline(always)]
fn write_ip4(ctx: &SockAddrContext, to: &Dest) {
    let t = to.addr;
    // SAFETY: valid context; the connect4/sendmsg4/recvmsg4/getpeername4
    // hooks may write `user_ip4` and `user_port` (4-byte stores), which is
    // how the kernel lets them rewrite an address.
    unsafe {
        let s: *mut bpf_sock_addr = ctx.sock_addr;
        (*s).user_ip4 = u32::from_ne_bytes([t[12], t[13], t[14], t[15]]);
        (*s).user_port = to.port.to_be() as u32;
    }
}

/// Writes a destination into a v6 hook's `user_ip6` / `user_port` (the
/// canonical form: a v4 listener as `::ffff:127.0.0.1`, which a dual-stack
/// socket reaches as 127.0.0.1).
#[inline(always)]
fn write_ip6(ctx: &SockAddrContext, to: &Dest) {
    let t = to.addr;
    // SAFETY: valid context; the connect6/sendmsg6/recvmsg6/getpeername6
    // hooks may write `user_ip6[0..4]` and `user_port` (4-byte stores).
    unsafe {
        let s: *mut bpf_sock_addr = ctx.sock_addr;
        (*s).user_ip6[0] = u32::from_ne_bytes([t[0], t[1], t[2], t[3]]);
        (*s).user_ip6[1] = u32::from_ne_bytes([t[4], t[5], t[6], t[7]]);
        (*s).user_ip6[2] = u32::from_ne_bytes([t[8], t[9], t[10], t[11]]);
        (*s).user_ip6[3] = u32::from_ne_bytes([t[12], t[13], t[14], t[15]]);
        (*s).user_port = to.port.to_be() as u32;
    }
}

/// What [`judge`] decided: a verdict, or (transparent mode) allow after
/// rewriting the destination to this listener.
enum Judged {
    Verdict(i32),
    Redirect {
        /// The listener.
        to: Dest,
        /// The deciding sandbox's cgroup.
        cgroup: u64,
    },
}

/// Transparent mode: the original destination of the socket behind `ctx`
/// is remembered (for the proxy and for `getpeername`/`recvmsg`).
#[inline(always)]
fn remember(ctx: &SockAddrContext, cgroup: u64, dest: &Dest) {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    let original = Original {
        addr: dest.addr,
        port: dest.port,
        _pad: [0; 6],
        cgroup,
    };
    // A full map evicts its oldest entry (LRU); an insert cannot fail for
    // want of room. Should it fail anyway, the proxy finds no record and
    // refuses the connection: nothing goes anywhere unjudged.
    let _ = ORIGINALS.insert(cookie, original, 0);
}

/// The original destination of a redirected socket, when what the socket
/// is about to be told (`seen`: its peer, or a datagram's source) is one of
/// its sandbox's listeners.
#[inline(always)]
fn original_of(ctx: &SockAddrContext, seen: &Dest) -> Option<Dest> {
    // SAFETY: helper without preconditions in cgroup programs.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let policy = policy_of(cgroup)?;
    if !is_listener(&policy.settings.redirects, seen) {
        return None;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
    // SAFETY: the entry is copied out at once; a concurrent rewrite of the
    // same socket's record could only come from that socket's own connect.
    let o = unsafe { ORIGINALS.get(cookie) }?;
    Some(Dest {
        addr: o.addr,
        port: o.port,
    })
}

/// `recvmsg`/`getpeername` on a v4 socket: a reply from a listener shows
/// the address the socket dialled (a stub resolver drops answers from
/// anywhere else; clients log and compare their peer).
#[inline(always)]
fn restore4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: valid context; recvmsg4/getpeername4 read `user_ip4` and
    // `user_port` with 4-byte loads.
    let (ip, port) = unsafe {
        let s: *const bpf_sock_addr = ctx.sock_addr;
        ((*s).user_ip4, (*s).user_port)
    };
    let seen = Dest::v4(ip.to_ne_bytes(), u16::from_be(port as u16));
    if let Some(o) = original_of(ctx, &seen) {
        if o.is_v4() {
            write_ip4(ctx, &o);
        }
    }
    // These hooks cannot refuse anything: 1 is their only valid return.
    ALLOW
}

/// As [`restore4`], on a v6 socket (v4-mapped peers included).
#[inline(always)]
fn restore6(ctx: &SockAddrContext) -> i32 {
    let seen = user_dest6(ctx);
    if let Some(orig) = original_of(ctx, &seen) {
        write_ip6(ctx, &orig);
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx)
}

/// The policy entry of a sandbox cgroup, or `None` (denied everything).
#[inline(always)]
fn policy_of(cgroup: u64) -> Option<MapPolicy<'static>> {
    // SAFETY: entries are written whole by userspace (one map update) and
    // this program only reads them.
    let settings = unsafe { POLICIES.get(cgroup) }?;
    Some(MapPolicy { cgroup, settings })
}

#[inline(always)]
fn judge(hook: Hook, family: u32, ty: u32, proto: u32, dest: &Dest) -> Judged {
    // The calling task's cgroup: a socket carried out of its sandbox is
    // judged by the policy of whoever uses it (none outside: denied), and
    // its packets by its own sandbox's at egress.
    // SAFETY: helper without preconditions in cgroup programs.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let Some(policy) = policy_of(cgroup) else {
        emit(cgroup, hook, family, ty, proto, dest, Reason::NoPolicy);
        return Judged::Verdict(DENY);
    };
    let send = matches!(hook, Hook::Sendmsg4 | Hook::Sendmsg6);
    if !matches!(hook, Hook::Bind4 | Hook::Bind6) {
        let transport = Transport::of(ty, proto);
        if let Some(r) = decide_redirect(&policy, dest, transport, send) {
            return Judged::Redirect { to: r.to, cgroup };
        }
        if is_quiet_probe(&policy, dest, transport, send) {
            return Judged::Verdict(DENY);
        }
    }
    let d = match hook {
        Hook::Bind4 | Hook::Bind6 => decide_bind(dest),
        Hook::Sendmsg4 | Hook::Sendmsg6 => decide_sendmsg(&policy, dest),
        _ => decide_connect(&policy, dest),
    };
    Judged::Verdict(verdict(
        cgroup,
        policy.audit(),
        d,
        hook,
        family,
        ty,
        proto,
        dest,
    ))
}

/// Allows, or denies and reports; in audit mode (the sandbox's settings
/// say so) a refusal that `nono_common::audit_verdict` lets through is
/// allowed and reported as would-deny.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn verdict(
    cgroup: u64,
    audit: bool,
    d: Decision,
    hook: Hook,
    family: u32,
    ty: u32,
    proto: u32,
    dest: &Dest,
) -> i32 {
    match audit_verdict(d, &dest.addr, audit) {
        Verdict::Allow => ALLOW,
        Verdict::WouldDeny => {
            // The packet hooks only follow what a socket hook let through
            // (and recorded): one record per connect or send, not per packet.
            if !matches!(hook, Hook::Egress | Hook::Ingress) {
                emit_verdict(
                    cgroup,
                    hook,
                    family,
                    ty,
                    proto,
                    dest,
                    d.reason,
                    EVENT_WOULD_DENY,
                );
            }
            ALLOW
        }
        Verdict::Deny => {
            emit(cgroup, hook, family, ty, proto, dest, d.reason);
            DENY
        }
    }
}

/// The shared table of refused options (`nono_common::REFUSED_OPTIONS`):
/// routing options, multicast memberships, device binding to anything but
/// `lo`. Options that only push loopback packets off the loopback device
/// are left to `egress`, which drops such packets.
#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: valid context from the kernel; level, optname and optlen are
    // readable.
    let (level, optname, optlen) = unsafe {
        let s: *const bpf_sockopt = ctx.sockopt;
        ((*s).level, (*s).optname, (*s).optlen)
    };
    let mut binds_lo = false;
    if let Some(e) = refused_option(level, optname) {
        if e.rule == OptionRule::LoopbackDeviceOnly {
            binds_lo = device_value_is_loopback(&ctx, optname, optlen);
        }
    }
    let d = decide_setsockopt(
        level,
        optname,
        OptionContext {
            binds_loopback_device: binds_lo,
            packet_filter: true,
        },
    );
    if d.allow {
        return ALLOW;
    }
    // SAFETY: helper without preconditions in cgroup programs.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    emit(
        cgroup,
        Hook::Setsockopt,
        0,
        level as u32,
        optname as u32,
        &Dest {
            addr: [0; 16],
            port: 0,
        },
        d.reason,
    );
    DENY
}

/// The largest option length whose value the program trusts: above a page
/// the kernel hands the program a truncated copy and re-reads the caller's
/// memory itself, which the caller could change in between.
const MAX_DEVICE_OPTLEN: i32 = 64;

/// Whether a `SO_BINDTODEVICE` / `SO_BINDTOIFINDEX` value binds to `lo` or
/// unbinds. The kernel runs its own handler on the copy this program read
/// (the value cannot change after the check) as long as the length stays
/// under a page.
#[inline(always)]
fn device_value_is_loopback(ctx: &SockoptContext, optname: i32, optlen: i32) -> bool {
    if !(0..=MAX_DEVICE_OPTLEN).contains(&optlen) {
        return false;
    }
    // SAFETY: valid context; optval/optval_end bound the copied value and
    // every read below is checked against optval_end first, as the verifier
    // requires.
    unsafe {
        let s: *const bpf_sockopt = ctx.sockopt;
        let start = (*s).__bindgen_anon_2.optval as *const u8;
        let end = (*s).__bindgen_anon_3.optval_end as *const u8;
        if optname == sockopt::SO_BINDTOIFINDEX {
            if start.add(4) > end {
                return false;
            }
            let idx = core::ptr::read_unaligned(start as *const u32);
            return idx == 0 || idx == sockopt::LOOPBACK_IFINDEX;
        }
        // SO_BINDTODEVICE: the name's first three bytes decide.
        let mut name = [0u8; 3];
        let mut n = 0usize;
        while n < 3 {
            let p = start.add(n);
            if p.add(1) > end || n as i32 >= optlen {
                break;
            }
            name[n] = *p;
            n += 1;
        }
        device_name_is_loopback(&name[..n])
    }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// The last word on every packet a sandboxed socket sends: its real
/// destination, read from the IP header after routing options, extension
/// headers and any socket-level trick have been applied.
#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    // The socket's cgroup, whoever sends: packets are judged by the policy
    // of the sandbox that created the socket.
    // SAFETY: the context's skb pointer is valid for the helper.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    match egress_dest(&ctx) {
        Some((family, proto, dest)) => {
            let Some(policy) = policy_of(cgroup) else {
                emit(
                    cgroup,
                    Hook::Egress,
                    family,
                    0,
                    proto,
                    &dest,
                    Reason::NoPolicy,
                );
                return DENY;
            };
            // ifindex 1 is the loopback device in every network namespace.
            // SAFETY: reading a field of the valid __sk_buff context.
            let on_lo = unsafe { (*ctx.skb.skb).ifindex } == 1;
            verdict(
                cgroup,
                policy.audit(),
                decide_egress(&policy, &dest, on_lo),
                Hook::Egress,
                family,
                0,
                proto,
                &dest,
            )
        }
        // Not IPv4/IPv6 or unreadable: nothing a socket in the sandbox can
        // legitimately send.
        None => {
            emit(
                cgroup,
                Hook::Egress,
                0,
                0,
                0,
                &Dest {
                    addr: [0; 16],
                    port: 0,
                },
                Reason::NotAllowed,
            );
            DENY
        }
    }
}

/// Every packet delivered to a sandbox socket: only what arrives on the
/// loopback device or from a proxy endpoint gets in. It runs before TCP's
/// listener code, so an off-host SYN is dropped before a SYN-cookie SYN-ACK
/// (which no socket owns, so `egress` never sees it) can answer it.
#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    // ifindex 1 is the loopback device in every network namespace.
    // SAFETY: reading a field of the valid __sk_buff context.
    let on_lo = unsafe { (*ctx.skb.skb).ifindex } == 1;
    if on_lo {
        return ALLOW;
    }
    let (family, proto, src) = match packet_end(&ctx, End::Source) {
        Some(t) => t,
        None => (
            0,
            0,
            Dest {
                addr: [0; 16],
                port: 0,
            },
        ),
    };
    // SAFETY: the context's skb pointer is valid for the helper.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let Some(policy) = policy_of(cgroup) else {
        emit(
            cgroup,
            Hook::Ingress,
            family,
            0,
            proto,
            &src,
            Reason::NoPolicy,
        );
        return DENY;
    };
    verdict(
        cgroup,
        policy.audit(),
        decide_ingress(&policy, &src, false),
        Hook::Ingress,
        family,
        0,
        proto,
        &src,
    )
}

/// Which end of a packet [`packet_end`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Destination,
}

/// (family, IP protocol, destination) of the packet; the port is 0 when it is
/// not a TCP/UDP first fragment directly after the fixed header.
#[inline(always)]
fn egress_dest(ctx: &SkBuffContext) -> Option<(u32, u32, Dest)> {
    packet_end(ctx, End::Destination)
}

/// (family, IP protocol, one end) of the packet: its source or destination
/// address, and port when it is a TCP/UDP first fragment right after the
/// fixed header (else 0).
#[inline(always)]
fn packet_end(ctx: &SkBuffContext, end: End) -> Option<(u32, u32, Dest)> {
    let src = end == End::Source;
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    if proto == ETH_P_IP {
        let vihl: u8 = ctx.load(0).ok()?;
        if vihl >> 4 != 4 {
            return None;
        }
        let ihl = ((vihl & 0x0f) as usize) * 4;
        let frag: u16 = u16::from_be(ctx.load(6).ok()?);
        let l4: u8 = ctx.load(9).ok()?;
        let daddr: [u8; 4] = ctx.load(if src { 12 } else { 16 }).ok()?;
        let mut port = 0u16;
        let l4 = l4 as u32;
        if frag & 0x1fff == 0
            && (l4 == consts::IPPROTO_TCP || l4 == consts::IPPROTO_UDP)
            && (20..=60).contains(&ihl)
        {
            port = u16::from_be(ctx.load(ihl + if src { 0 } else { 2 }).ok()?);
        }
        Some((consts::AF_INET, l4, Dest::v4(daddr, port)))
    } else if proto == ETH_P_IPV6 {
        let v: u8 = ctx.load(0).ok()?;
        if v >> 4 != 6 {
            return None;
        }
        let next: u8 = ctx.load(6).ok()?;
        let daddr: [u8; 16] = ctx.load(if src { 8 } else { 24 }).ok()?;
        let next = next as u32;
        let mut port = 0u16;
        if next == consts::IPPROTO_TCP || next == consts::IPPROTO_UDP {
            port = u16::from_be(ctx.load(if src { 40 } else { 42 }).ok()?);
        }
        Some((consts::AF_INET6, next, Dest::v6(daddr, port)))
    } else {
        None
    }
}

#[inline(always)]
fn emit(cgroup_id: u64, hook: Hook, family: u32, ty: u32, proto: u32, dest: &Dest, reason: Reason) {
    emit_verdict(cgroup_id, hook, family, ty, proto, dest, reason, EVENT_DENY);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit_verdict(
    cgroup_id: u64,
    hook: Hook,
    family: u32,
    ty: u32,
    proto: u32,
    dest: &Dest,
    reason: Reason,
    verdict: u16,
) {
    let Some(mut entry) = EVENTS.reserve::<DenyEvent>(0) else {
        if let Some(p) = DROPPED.get_ptr_mut(0) {
            // SAFETY: element 0 exists (max_entries 1) and is this CPU's own
            // slot; BPF programs are not preempted on one CPU mid-update.
            unsafe { *p += 1 };
        }
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    entry.write(DenyEvent {
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        cgroup_id,
        comm,
        hook: hook as u32,
        family,
        sock_type: ty,
        protocol: proto,
        addr: dest.addr,
        port: dest.port,
        verdict,
        reason: reason as u32,
    });
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
