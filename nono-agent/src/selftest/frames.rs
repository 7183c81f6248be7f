//! Parsing of the frames the sniffer captures: Ethernet, IPv4 (options,
//! source routes), IPv6 (extension headers, routing header type), TCP
//! flags and MSS (SYN-ACKs), UDP ports, ICMP/ICMPv6 echo ids, IGMP/MLD
//! membership reports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETHERTYPE_TAG: u16 = 0x88B5;

/// Transport protocol for [`Oracle::packets_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One parsed frame seen on the server veth (incoming only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Ip {
        v6: bool,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        dst_port: Option<u16>,
        /// Identifier of an ICMP/ICMPv6 echo request.
        echo_id: Option<u16>,
        /// IPv4 options present (IHL > 5) or IPv6 extension headers before
        /// the upper-layer header.
        options: bool,
        /// Type of the IPv6 routing header (next header 43), if one is present.
        rthdr: Option<u8>,
        /// Source routed: an IPv4 LSRR/SSRR option or an IPv6 routing
        /// header (router alerts in MLD/IGMP do not count).
        routed: bool,
        /// TCP/UDP source port.
        src_port: Option<u16>,
        /// TCP segments: the flags byte and the MSS option (SYN segments
        /// carry it), so SYN-ACKs and the value they leak can be told.
        tcp: Option<TcpInfo>,
        /// IGMP (v1/v2/v3) and MLD (v1/v2) reports and leaves: the group
        /// addresses they name (kernel-generated packets no socket owns).
        groups: Vec<IpAddr>,
    },
    Tagged(Vec<u8>),
    Other(u16),
}

/// Walks the IPv6 extension headers (hop-by-hop 0, routing 43, destination
/// options 60, fragment 44) after the fixed header `p[..40]`. Returns the
/// upper-layer protocol, its offset in `p` (None for a non-first fragment or
/// a truncated chain), whether any extension header was present and the
/// routing header type.
pub fn ipv6_upper_layer(p: &[u8]) -> (u8, Option<usize>, bool, Option<u8>) {
    let mut next = p[6];
    let mut off = 40usize;
    let mut ext = false;
    let mut rthdr = None;
    // A bound on the chain length; real packets have a handful at most.
    for _ in 0..16 {
        match next {
            0 | 43 | 60 => {
                let (Some(&nh), Some(&len)) = (p.get(off), p.get(off + 1)) else {
                    return (next, None, true, rthdr);
                };
                if next == 43 {
                    rthdr = p.get(off + 2).copied();
                }
                ext = true;
                next = nh;
                off += (len as usize + 1) * 8;
            }
            44 => {
                let Some(h) = p.get(off..off + 8) else {
                    return (next, None, true, rthdr);
                };
                ext = true;
                next = h[0];
                off += 8;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    // Not the first fragment: no upper-layer header here.
                    return (next, None, ext, rthdr);
                }
            }
            _ => return (next, Some(off), ext, rthdr),
        }
    }
    (next, None, ext, rthdr)
}

/// True if the IPv4 options `opts` contain a loose (131) or strict (137)
/// source route.
pub fn ipv4_source_routed(opts: &[u8]) -> bool {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return false,
            1 => i += 1,
            131 | 137 => return true,
            _ => match opts.get(i + 1) {
                Some(&len) if len >= 2 => i += len as usize,
                _ => return false,
            },
        }
    }
    false
}

/// What a TCP header says beyond the ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    pub flags: u8,
    pub mss: Option<u16>,
}

impl TcpInfo {
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    /// SYN and ACK set (and no RST).
    pub fn is_syn_ack(&self) -> bool {
        self.flags & (Self::SYN | Self::ACK | Self::RST) == Self::SYN | Self::ACK
    }
}

/// Flags and MSS option of the TCP header `t` (None if truncated).
pub fn tcp_info(t: &[u8]) -> Option<TcpInfo> {
    let hlen = ((*t.get(12)? >> 4) as usize) * 4;
    let flags = *t.get(13)?;
    let opts = t.get(20..hlen.max(20)).unwrap_or(&[]);
    let mut mss = None;
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = opts.get(i + 1) else { break };
                if len < 2 {
                    break;
                }
                if kind == 2 && len == 4 {
                    mss = opts
                        .get(i + 2..i + 4)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]));
                }
                i += len as usize;
            }
        }
    }
    Some(TcpInfo { flags, mss })
}

/// Group addresses named by an IGMP message (`v6` false) or an MLD message
/// (ICMPv6, `v6` true): v1/v2 reports and leaves carry one, v3 / MLDv2
/// reports a list of group records.
pub fn membership_groups(v6: bool, m: &[u8]) -> Vec<IpAddr> {
    let addr = |b: &[u8]| -> Option<IpAddr> {
        if v6 {
            let a: [u8; 16] = b.get(..16)?.try_into().ok()?;
            Some(Ipv6Addr::from(a).into())
        } else {
            let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
            Some(Ipv4Addr::from(a).into())
        }
    };
    let (alen, single_at, v3) = match (v6, m.first()) {
        // IGMPv1/v2 report, v2 leave: group at offset 4.
        (false, Some(0x12 | 0x16 | 0x17)) => (4, 4, false),
        (false, Some(0x22)) => (4, 0, true),
        // MLDv1 report / done: address at offset 8.
        (true, Some(131 | 132)) => (16, 8, false),
        (true, Some(143)) => (16, 0, true),
        _ => return Vec::new(),
    };
    if !v3 {
        return m.get(single_at..).and_then(addr).into_iter().collect();
    }
    let Some(n) = m.get(6..8).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut off = 8;
    for _ in 0..n {
        let Some(rec) = m.get(off..off + 4 + alen) else {
            break;
        };
        let (aux, nsrc) = (
            rec[1] as usize,
            u16::from_be_bytes([rec[2], rec[3]]) as usize,
        );
        out.extend(addr(&rec[4..]));
        off += 4 + alen + nsrc * alen + aux * 4;
    }
    out
}

pub fn parse_frame(buf: &[u8]) -> Frame {
    if buf.len() < 14 {
        return Frame::Other(0);
    }
    let ethertype = u16::from_be_bytes([buf[12], buf[13]]);
    let p = &buf[14..];
    let l4 = |proto: u8, l4: &[u8], v6: bool| -> (Option<u16>, Option<u16>) {
        match proto {
            6 | 17 if l4.len() >= 4 => (Some(u16::from_be_bytes([l4[2], l4[3]])), None),
            1 if !v6 && l4.len() >= 8 && l4[0] == 8 => {
                (None, Some(u16::from_be_bytes([l4[4], l4[5]])))
            }
            58 if v6 && l4.len() >= 8 && l4[0] == 128 => {
                (None, Some(u16::from_be_bytes([l4[4], l4[5]])))
            }
            _ => (None, None),
        }
    };
    let src_port = |proto: u8, l4: &[u8]| match proto {
        6 | 17 if l4.len() >= 2 => Some(u16::from_be_bytes([l4[0], l4[1]])),
        _ => None,
    };
    match ethertype {
        0x0800 if p.len() >= 20 => {
            // The header length (IHL) covers any options: source-routed
            // packets carry LSRR/SSRR there.
            let ihl = ((p[0] & 0x0f) as usize) * 4;
            let proto = p[9];
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]).into();
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]).into();
            let first_fragment = u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0;
            let upper = if ihl >= 20 && first_fragment {
                p.get(ihl..).unwrap_or(&[])
            } else {
                &[]
            };
            let (dst_port, echo_id) = l4(proto, upper, false);
            Frame::Ip {
                src_port: src_port(proto, upper),
                tcp: (proto == 6).then(|| tcp_info(upper)).flatten(),
                groups: if proto == 2 {
                    membership_groups(false, upper)
                } else {
                    Vec::new()
                },
                v6: false,
                src,
                dst,
                proto,
                dst_port,
                echo_id,
                options: ihl > 20,
                rthdr: None,
                routed: ihl > 20 && ipv4_source_routed(p.get(20..ihl).unwrap_or(&[])),
            }
        }
        0x86DD if p.len() >= 40 => {
            let mut s = [0u8; 16];
            s.copy_from_slice(&p[8..24]);
            let mut d = [0u8; 16];
            d.copy_from_slice(&p[24..40]);
            let (proto, off, ext, rthdr) = ipv6_upper_layer(p);
            let upper = off.and_then(|o| p.get(o..)).unwrap_or(&[]);
            let (dst_port, echo_id) = l4(proto, upper, true);
            Frame::Ip {
                src_port: src_port(proto, upper),
                tcp: (proto == 6).then(|| tcp_info(upper)).flatten(),
                groups: if proto == 58 {
                    membership_groups(true, upper)
                } else {
                    Vec::new()
                },
                v6: true,
                src: Ipv6Addr::from(s).into(),
                dst: Ipv6Addr::from(d).into(),
                proto,
                dst_port,
                echo_id,
                options: ext,
                rthdr,
                routed: rthdr.is_some(),
            }
        }
        ETHERTYPE_TAG => Frame::Tagged(p.to_vec()),
        other => Frame::Other(other),
    }
}

pub fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&[198, 51, 100, 1, 198, 51, 100, 2]);
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn parses_tcp_and_udp_ports() {
        let f = parse_frame(&eth(0x0800, &ipv4(6, &[0x80, 0, 0x4e, 0x20, 0, 0, 0, 0])));
        assert!(matches!(
            f,
            Frame::Ip {
                v6: false,
                proto: 6,
                dst_port: Some(20000),
                ..
            }
        ));
        let f = parse_frame(&eth(0x0800, &ipv4(17, &[0x80, 0, 0x4e, 0x21])));
        assert!(matches!(
            f,
            Frame::Ip {
                proto: 17,
                dst_port: Some(20001),
                ..
            }
        ));
    }

    #[test]
    fn parses_icmp_echo_id_and_ignores_replies() {
        let f = parse_frame(&eth(0x0800, &ipv4(1, &[8, 0, 0, 0, 0x12, 0x34, 0, 1])));
        assert!(matches!(
            f,
            Frame::Ip {
                echo_id: Some(0x1234),
                ..
            }
        ));
        let f = parse_frame(&eth(0x0800, &ipv4(1, &[0, 0, 0, 0, 0x12, 0x34, 0, 1])));
        assert!(matches!(f, Frame::Ip { echo_id: None, .. }));
    }

    #[test]
    fn parses_icmpv6_echo_and_tagged_frames() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 58, 64];
        p.extend_from_slice(&SERVER_V4.to_ipv6_mapped().octets());
        p.extend_from_slice(&SERVER_V4.to_ipv6_mapped().octets());
        p.extend_from_slice(&[128, 0, 0, 0, 0xab, 0xcd, 0, 1]);
        let f = parse_frame(&eth(0x86DD, &p));
        assert!(matches!(
            f,
            Frame::Ip {
                v6: true,
                echo_id: Some(0xabcd),
                ..
            }
        ));
        assert_eq!(
            parse_frame(&eth(ETHERTYPE_TAG, b"TAG-1")),
            Frame::Tagged(b"TAG-1".to_vec())
        );
        assert_eq!(parse_frame(&[1, 2, 3]), Frame::Other(0));
    }

    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, rest.len() as u8, next, 64];
        p.extend_from_slice(&[0u8; 15]);
        p.push(1);
        p.extend_from_slice(&SERVER_V6.octets());
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn walks_ipv6_extension_headers_to_the_port() {
        // Segment routing header (type 4, two segments), then UDP.
        let mut rest = vec![17, 4, 4, 1, 1, 0, 0, 0];
        rest.extend_from_slice(&[0u8; 32]);
        rest.extend_from_slice(&[0x80, 0, 0x4e, 0x22, 0, 8, 0, 0]);
        let f = parse_frame(&eth(0x86DD, &ipv6(43, &rest)));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    v6: true,
                    proto: 17,
                    dst_port: Some(20002),
                    options: true,
                    rthdr: Some(4),
                    routed: true,
                    ..
                }
            ),
            "{f:?}"
        );
        // Hop-by-hop (8 bytes) + destination options (16 bytes) + TCP.
        let mut rest = vec![60, 0, 1, 4, 0, 0, 0, 0];
        rest.extend_from_slice(&[6, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend_from_slice(&[0x80, 0, 0x4e, 0x23, 0, 0, 0, 0]);
        let f = parse_frame(&eth(0x86DD, &ipv6(0, &rest)));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    proto: 6,
                    dst_port: Some(20003),
                    options: true,
                    rthdr: None,
                    routed: false,
                    ..
                }
            ),
            "{f:?}"
        );
        // First fragment has the port, a later one does not.
        let first = [17, 0, 0, 1, 0, 0, 0, 7, 0x80, 0, 0x4e, 0x24];
        let f = parse_frame(&eth(0x86DD, &ipv6(44, &first)));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    proto: 17,
                    dst_port: Some(20004),
                    ..
                }
            ),
            "{f:?}"
        );
        let later = [17, 0, 0, 0x10, 0, 0, 0, 7, 0x80, 0, 0x4e, 0x24];
        let f = parse_frame(&eth(0x86DD, &ipv6(44, &later)));
        assert!(matches!(f, Frame::Ip { dst_port: None, .. }), "{f:?}");
        // Plain UDP: no options.
        let f = parse_frame(&eth(0x86DD, &ipv6(17, &[0x80, 0, 0x4e, 0x25])));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    dst_port: Some(20005),
                    options: false,
                    ..
                }
            ),
            "{f:?}"
        );
    }

    #[test]
    fn parses_syn_ack_flags_and_mss() {
        // Ports 20000 -> 40000, data offset 6 (MSS 1234), SYN+ACK.
        let mut t = vec![
            0x4e, 0x20, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 2, 0x60, 0x12, 0xff, 0xff,
        ];
        t.extend_from_slice(&[0, 0, 0, 0, 2, 4, 0x04, 0xd2]);
        let f = parse_frame(&eth(0x0800, &ipv4(6, &t)));
        let Frame::Ip {
            src_port: Some(20000),
            dst_port: Some(40000),
            tcp: Some(info),
            ..
        } = f
        else {
            panic!("{f:?}")
        };
        assert!(info.is_syn_ack());
        assert_eq!(info.mss, Some(1234));
        // A reset (RST+ACK, no options) is no SYN-ACK.
        let rst = [
            0x4e, 0x20, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x14, 0, 0, 0, 0, 0, 0,
        ];
        let f = parse_frame(&eth(0x0800, &ipv4(6, &rst)));
        assert!(
            matches!(f, Frame::Ip { tcp: Some(i), .. } if !i.is_syn_ack() && i.mss.is_none()),
            "{f:?}"
        );
    }

    #[test]
    fn parses_igmp_and_mld_groups() {
        // IGMPv3 report, two records (the first with one source).
        let mut m = vec![0x22, 0, 0, 0, 0, 0, 0, 2];
        m.extend_from_slice(&[1, 0, 0, 1, 239, 1, 2, 3, 198, 51, 100, 2]);
        m.extend_from_slice(&[4, 0, 0, 0, 239, 1, 2, 4]);
        let mut p = vec![0x46, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0];
        p.extend_from_slice(&[198, 51, 100, 1, 224, 0, 0, 22]);
        p.extend_from_slice(&[148, 4, 0, 0]);
        p.extend_from_slice(&m);
        let f = parse_frame(&eth(0x0800, &p));
        let g: Vec<IpAddr> = vec![
            Ipv4Addr::new(239, 1, 2, 3).into(),
            Ipv4Addr::new(239, 1, 2, 4).into(),
        ];
        assert!(
            matches!(&f, Frame::Ip { groups, .. } if *groups == g),
            "{f:?}"
        );
        // IGMPv2 leave.
        let f = parse_frame(&eth(0x0800, &ipv4(2, &[0x17, 0, 0, 0, 239, 9, 9, 9])));
        assert!(
            matches!(&f, Frame::Ip { groups, .. } if *groups == vec![IpAddr::from(Ipv4Addr::new(239, 9, 9, 9))]),
            "{f:?}"
        );
        // MLDv2 report after a hop-by-hop header (router alert).
        let group = Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0, 0x1234);
        let mut rest = vec![58, 0, 5, 2, 0, 0, 1, 0];
        rest.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0]);
        rest.extend_from_slice(&group.octets());
        let f = parse_frame(&eth(0x86DD, &ipv6(0, &rest)));
        assert!(
            matches!(&f, Frame::Ip { groups, .. } if *groups == vec![IpAddr::from(group)]),
            "{f:?}"
        );
        // An echo request names no group.
        let f = parse_frame(&eth(0x0800, &ipv4(1, &[8, 0, 0, 0, 0, 1, 0, 1])));
        assert!(matches!(&f, Frame::Ip { groups, .. } if groups.is_empty()));
    }

    #[test]
    fn honours_ipv4_header_length() {
        // IHL 7: LSRR option (7 bytes) + 1 byte padding, then UDP.
        let mut p = vec![0x47, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&[198, 51, 100, 1, 198, 51, 100, 2]);
        p.extend_from_slice(&[131, 7, 4, 127, 0, 0, 1, 0]);
        p.extend_from_slice(&[0x80, 0, 0x4e, 0x26, 0, 8, 0, 0]);
        let f = parse_frame(&eth(0x0800, &p));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    v6: false,
                    proto: 17,
                    dst_port: Some(20006),
                    options: true,
                    routed: true,
                    ..
                }
            ),
            "{f:?}"
        );
        // IHL 6: router alert (IGMP-style) is an option but no source route.
        let mut p = vec![0x46, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0];
        p.extend_from_slice(&[198, 51, 100, 1, 224, 0, 0, 22]);
        p.extend_from_slice(&[148, 4, 0, 0, 0x22, 0, 0, 0]);
        let f = parse_frame(&eth(0x0800, &p));
        assert!(
            matches!(
                f,
                Frame::Ip {
                    options: true,
                    routed: false,
                    ..
                }
            ),
            "{f:?}"
        );
        let f = parse_frame(&eth(0x0800, &ipv4(17, &[0x80, 0, 0x4e, 0x27])));
        assert!(matches!(f, Frame::Ip { options: false, .. }), "{f:?}");
    }
}
