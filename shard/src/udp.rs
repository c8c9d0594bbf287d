//! The datagram side of the QUIC driver, without I/O: what a multishot `recvmsg` completion's
//! buffer holds ([`parse_recvmsg`]: the `io_uring_recvmsg_out` header, the source address, the
//! `UDP_GRO` segment size), and the connection ids that name their owning shard
//! ([`ShardCids`], [`owner_of`]).
//!
//! # Connection ids that route
//! With one `SO_REUSEPORT` socket per shard the kernel spreads datagrams by their 4-tuple, so a
//! connection stays on one shard until its peer's address changes (migration, NAT rebinding).
//! Every connection id this runtime issues is [`CID_LEN`] bytes: the owning shard, five random
//! bytes, and a 16-bit tag keyed by a process secret over the first six. A shard that receives a
//! datagram whose destination id carries a valid tag naming another shard forwards it there;
//! anything else (a peer's own Initial id, garbage) is handled locally, where quinn-proto
//! drops short-header packets whose id does not validate. A forged id passes the tag check with
//! probability 2^-16, so a flood of garbage costs no forwarding (no allocation) beyond that.
//!
//! Everything here parses untrusted bytes: no panics, no allocation, fuzzed
//! (`fuzz_udp_datagram`).
#![forbid(unsafe_code)]

use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::OnceLock;
use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};

/// Bytes reserved for the source address in each receive buffer (a `sockaddr_in6` is 28).
pub(crate) const NAME_LEN: u32 = 32;
/// Bytes reserved for control messages in each receive buffer (`UDP_GRO` needs 20).
pub(crate) const CONTROL_LEN: usize = 64;
/// Size of the `io_uring_recvmsg_out` header at the start of each buffer.
pub(crate) const RECVMSG_OUT_LEN: usize = 16;
/// Largest UDP payload a GRO receive coalesces (64 KiB).
pub(crate) const MAX_GRO_PAYLOAD: usize = 65_536;

/// One received datagram (or GRO batch of equal-size datagrams) inside a receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Received<'a> {
    /// Who sent it (`None` if the address family is not IPv4/IPv6).
    pub peer: Option<SocketAddr>,
    /// GRO: the size of each coalesced datagram (the last may be shorter); `None` for one
    /// datagram.
    pub segment: Option<usize>,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// The kernel had more bytes than the buffer held (they are lost).
    pub truncated: bool,
}

/// A receive buffer that cannot be what a multishot `recvmsg` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed recvmsg buffer")]
pub struct MalformedRecv;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    u32_at(b, at).map(|v| v as i32)
}

fn u16_be_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Parses a multishot `recvmsg` buffer laid out with `name_len` name bytes and `control_len`
/// control bytes (the lengths of the `msghdr` the receive was armed with).
pub fn parse_recvmsg(
    buf: &[u8],
    name_len: usize,
    control_len: usize,
) -> Result<Received<'_>, MalformedRecv> {
    let got_name = u32_at(buf, 0).ok_or(MalformedRecv)? as usize;
    let got_control = u32_at(buf, 4).ok_or(MalformedRecv)? as usize;
    let payload_len = u32_at(buf, 8).ok_or(MalformedRecv)? as usize;
    let flags = i32_at(buf, 12).ok_or(MalformedRecv)?;
    let name_at = RECVMSG_OUT_LEN;
    let control_at = name_at.checked_add(name_len).ok_or(MalformedRecv)?;
    let payload_at = control_at.checked_add(control_len).ok_or(MalformedRecv)?;
    if payload_at > buf.len() {
        return Err(MalformedRecv);
    }
    let name = &buf[name_at..name_at + got_name.min(name_len)];
    let control = &buf[control_at..control_at + got_control.min(control_len)];
    let room = buf.len() - payload_at;
    let payload = &buf[payload_at..payload_at + payload_len.min(room)];
    Ok(Received {
        peer: parse_sockaddr(name),
        segment: gro_segment(control).filter(|&s| s > 0 && s < payload.len()),
        payload,
        truncated: payload_len > room
            || flags & libc::MSG_TRUNC != 0
            || got_name > name_len
            || flags & libc::MSG_CTRUNC != 0,
    })
}

/// A `sockaddr_in` / `sockaddr_in6` as written by the kernel (host-order family, network-order
/// port and address).
pub fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = b.get(0..2).map(|f| u16::from_ne_bytes([f[0], f[1]]))?;
    let port = u16_be_at(b, 2)?;
    match i32::from(family) {
        libc::AF_INET => {
            let a = b.get(4..8)?;
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(a[0], a[1], a[2], a[3]),
                port,
            )))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32_at(b, 24)?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// The `UDP_GRO` segment size among the control messages, if there is one.
pub fn gro_segment(mut control: &[u8]) -> Option<usize> {
    const HDR: usize = 16; // cmsghdr: usize len, i32 level, i32 type
    while control.len() >= HDR {
        let len = u64::from_ne_bytes(control[0..8].try_into().ok()?) as usize;
        if len < HDR || len > control.len() {
            return None;
        }
        let level = i32_at(control, 8)?;
        let kind = i32_at(control, 12)?;
        if level == libc::SOL_UDP && kind == libc::UDP_GRO {
            return i32_at(control, HDR).and_then(|v| usize::try_from(v).ok());
        }
        // CMSG_ALIGN: the next header starts at the next multiple of 8.
        let next = len.checked_add(7)? & !7;
        control = control.get(next..)?;
    }
    None
}

/// Length of every connection id this runtime issues.
pub const CID_LEN: usize = 8;

/// The process secret keying connection-id tags (SipHash with random keys).
fn cid_key() -> &'static std::collections::hash_map::RandomState {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(std::collections::hash_map::RandomState::new)
}

fn cid_tag(head: &[u8]) -> [u8; 2] {
    let h = cid_key().hash_one(head);
    [(h >> 8) as u8, h as u8]
}

/// True if `cid` is one this process issued (its tag checks out).
pub fn cid_is_ours(cid: &[u8]) -> bool {
    cid.len() == CID_LEN && cid[6..8] == cid_tag(&cid[..6])
}

/// The shard named by the destination connection id of `datagram`, if that id is one of ours
/// (a long header's id of [`CID_LEN`] bytes, or a short header's first [`CID_LEN`] bytes).
pub fn owner_of(datagram: &[u8]) -> Option<u8> {
    let first = *datagram.first()?;
    let cid = if first & 0x80 != 0 {
        // Long header: flags, version (4), dcid length, dcid.
        if *datagram.get(5)? as usize != CID_LEN {
            return None;
        }
        datagram.get(6..6 + CID_LEN)?
    } else {
        datagram.get(1..1 + CID_LEN)?
    };
    cid_is_ours(cid).then_some(cid[0])
}

/// quinn-proto's connection-id generator for one shard: ids that name the shard (see the
/// module docs).
#[derive(Debug)]
pub struct ShardCids {
    shard: u8,
    lifetime: Option<Duration>,
}

impl ShardCids {
    /// Ids naming `shard` (shards beyond 255 share the low byte: their strays are forwarded
    /// to the shard with that index, which then handles them as any unknown id).
    pub fn new(shard: usize) -> Self {
        Self {
            shard: shard as u8,
            lifetime: None,
        }
    }
}

impl ConnectionIdGenerator for ShardCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut b = [0u8; CID_LEN];
        b[0] = self.shard;
        // A CSPRNG failure leaves the bytes zero: the id still routes and validates.
        let _ = aws_lc_rs::rand::fill(&mut b[1..6]);
        let tag = cid_tag(&b[..6]);
        b[6..8].copy_from_slice(&tag);
        ConnectionId::new(&b)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid_is_ours(cid) {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(name: &[u8], control: &[u8], payload: &[u8], flags: i32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        b.extend_from_slice(&(control.len() as u32).to_ne_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        let mut n = name.to_vec();
        n.resize(NAME_LEN as usize, 0);
        b.extend_from_slice(&n);
        let mut c = control.to_vec();
        c.resize(CONTROL_LEN, 0);
        b.extend_from_slice(&c);
        b.extend_from_slice(payload);
        b
    }

    fn sockaddr_v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut n = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        n.extend_from_slice(&port.to_be_bytes());
        n.extend_from_slice(&ip);
        n.extend_from_slice(&[0; 8]);
        n
    }

    fn gro_cmsg(seg: i32) -> Vec<u8> {
        let mut c = 20u64.to_ne_bytes().to_vec();
        c.extend_from_slice(&libc::SOL_UDP.to_ne_bytes());
        c.extend_from_slice(&libc::UDP_GRO.to_ne_bytes());
        c.extend_from_slice(&seg.to_ne_bytes());
        c.extend_from_slice(&[0; 4]);
        c
    }

    #[test]
    fn parses_a_gro_batch_with_its_source() {
        let payload = vec![7u8; 3000];
        let b = out(
            &sockaddr_v4([127, 0, 0, 1], 4433),
            &gro_cmsg(1200),
            &payload,
            0,
        );
        let r = parse_recvmsg(&b, NAME_LEN as usize, CONTROL_LEN).unwrap();
        assert_eq!(r.peer, Some("127.0.0.1:4433".parse().unwrap()));
        assert_eq!(r.segment, Some(1200));
        assert_eq!(r.payload.len(), 3000);
        assert!(!r.truncated);
    }

    #[test]
    fn ipv6_sources_parse() {
        let mut n = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        n.extend_from_slice(&443u16.to_be_bytes());
        n.extend_from_slice(&[0; 4]);
        n.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        n.extend_from_slice(&0u32.to_ne_bytes());
        assert_eq!(parse_sockaddr(&n), Some("[::1]:443".parse().unwrap()));
    }

    #[test]
    fn truncation_is_reported_not_hidden() {
        let mut b = out(&sockaddr_v4([10, 0, 0, 1], 1), &[], &[1, 2, 3, 4], 0);
        b.truncate(b.len() - 2);
        let r = parse_recvmsg(&b, NAME_LEN as usize, CONTROL_LEN).unwrap();
        assert_eq!(r.payload, &[1, 2]);
        assert!(r.truncated);
        let b = out(&[], &[], &[1], libc::MSG_TRUNC);
        assert!(
            parse_recvmsg(&b, NAME_LEN as usize, CONTROL_LEN)
                .unwrap()
                .truncated
        );
    }

    #[test]
    fn short_or_garbage_buffers_are_errors_not_panics() {
        assert_eq!(parse_recvmsg(&[0; 15], 32, 64), Err(MalformedRecv));
        assert_eq!(parse_recvmsg(&[0xff; 40], 32, 64), Err(MalformedRecv));
        assert_eq!(gro_segment(&[0xff; 40]), None);
        assert_eq!(gro_segment(&[0; 3]), None);
        assert_eq!(parse_sockaddr(&[2, 0]), None);
    }

    #[test]
    fn issued_ids_validate_and_route_to_their_shard() {
        let mut g = ShardCids::new(3);
        for _ in 0..100 {
            let cid = g.generate_cid();
            assert_eq!(cid.len(), CID_LEN);
            assert!(g.validate(&cid).is_ok());
            // Short header: flags byte, then the id.
            let mut short = vec![0x40];
            short.extend_from_slice(&cid);
            short.extend_from_slice(&[0; 20]);
            assert_eq!(owner_of(&short), Some(3));
            // Long header: flags, version, id length, id.
            let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
            long.extend_from_slice(&cid);
            assert_eq!(owner_of(&long), Some(3));
        }
    }

    #[test]
    fn foreign_ids_do_not_route() {
        // A client's random Initial id, or garbage: almost never ours (tag of 16 bits).
        let mut routed = 0;
        for i in 0u32..1000 {
            let mut d = vec![0x40];
            d.extend_from_slice(&i.to_be_bytes());
            d.extend_from_slice(&(i.wrapping_mul(2_654_435_761)).to_le_bytes());
            if owner_of(&d).is_some() {
                routed += 1;
            }
        }
        assert!(routed <= 2, "{routed} of 1000 foreign ids passed the tag");
        let mut g = ShardCids::new(1);
        let cid = g.generate_cid();
        let mut flipped = cid.to_vec();
        flipped[0] ^= 1; // another shard's byte with this tag: forged
        assert!(!cid_is_ours(&flipped));
        assert_eq!(owner_of(&[]), None);
        assert_eq!(owner_of(&[0xc0, 0, 0, 0, 1, 20]), None);
    }
}
