//! Fuzz target `fuzz_udp_datagram`: the QUIC driver's own datagram parsing
//! (`ron_shard::udp`) on arbitrary bytes — a multishot `recvmsg` buffer
//! ([`parse_recvmsg`], with the driver's layout and with input-chosen lengths), a source
//! address ([`parse_sockaddr`]), control messages ([`gro_segment`]) and a datagram's
//! destination connection id ([`owner_of`] / [`cid_is_ours`]).
//!
//! Invariants: never a panic, never an allocation (a flood of garbage costs nothing beyond the
//! ring buffer); a parsed buffer's payload is the sub-slice of the input right after the
//! header, name and control areas, as long as the header says or as the buffer holds (and then
//! `truncated`); a GRO segment size is `0 < segment < payload.len()`; the source address is
//! what [`parse_sockaddr`] makes of the name bytes the header counts; `owner_of(d) == Some(s)`
//! implies the extracted id is ours and names shard `s`; an id the shard issued, embedded in a
//! long or short header around the input, routes to that shard.
#![no_main]

use std::net::SocketAddr;
use std::sync::Once;

use ron_shard::fuzzing::{issue_cid, recvmsg_layout};
use ron_shard::udp::{cid_is_ours, gro_segment, owner_of, parse_recvmsg, parse_sockaddr, CID_LEN};

#[path = "common/alloc.rs"]
mod alloc_observer;

// Linux values (the fuzz crate does not depend on libc).
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const MSG_CTRUNC: u32 = 0x8;
const MSG_TRUNC: u32 = 0x20;
/// The `io_uring_recvmsg_out` header.
const OUT_LEN: usize = 16;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

/// Offset of `inner` in `outer`, asserting it lies within it.
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    assert!(
        i >= o && i + inner.len() <= o + outer.len(),
        "slice not within the input"
    );
    i - o
}

fn check_recvmsg(buf: &[u8], name_len: usize, control_len: usize) {
    let (r, allocs, _) = alloc_observer::observed(|| parse_recvmsg(buf, name_len, control_len));
    assert_eq!(allocs, 0, "parse_recvmsg allocated");
    let payload_at = OUT_LEN
        .checked_add(name_len)
        .and_then(|n| n.checked_add(control_len));
    let fits = payload_at.is_some_and(|p| p <= buf.len());
    let r = match r {
        Ok(r) => r,
        Err(_) => {
            assert!(!fits, "refused a buffer that holds the whole layout");
            return;
        }
    };
    assert!(fits, "parsed a buffer shorter than its layout");
    let payload_at = payload_at.unwrap();
    let (got_name, claimed, flags) = (
        u32_at(buf, 0) as usize,
        u32_at(buf, 8) as usize,
        u32_at(buf, 12),
    );
    let room = buf.len() - payload_at;
    assert_eq!(
        offset_in(buf, r.payload),
        payload_at,
        "payload not after the layout"
    );
    assert_eq!(r.payload.len(), claimed.min(room));
    if let Some(seg) = r.segment {
        assert!(
            seg > 0 && seg < r.payload.len(),
            "segment {seg} of {}",
            r.payload.len()
        );
    }
    if claimed > room || got_name > name_len || flags & (MSG_TRUNC | MSG_CTRUNC) != 0 {
        assert!(r.truncated, "lost bytes not reported");
    }
    let name = &buf[OUT_LEN..OUT_LEN + got_name.min(name_len)];
    assert_eq!(r.peer, parse_sockaddr(name));
    assert_eq!(r.peer.is_some(), check_sockaddr(name));
}

/// Checks `parse_sockaddr(b)` against the layout of `sockaddr_in` / `sockaddr_in6`; returns
/// whether it parsed.
fn check_sockaddr(b: &[u8]) -> bool {
    let (a, allocs, _) = alloc_observer::observed(|| parse_sockaddr(b));
    assert_eq!(allocs, 0, "parse_sockaddr allocated");
    let family = (b.len() >= 2).then(|| u16::from_ne_bytes([b[0], b[1]]));
    match a {
        None => {
            let complete = (family == Some(AF_INET) && b.len() >= 8)
                || (family == Some(AF_INET6) && b.len() >= 28);
            assert!(!complete, "a complete address refused");
            false
        }
        Some(SocketAddr::V4(v4)) => {
            assert_eq!(family, Some(AF_INET));
            assert!(b.len() >= 8);
            assert_eq!(v4.port(), u16::from_be_bytes([b[2], b[3]]));
            assert_eq!(v4.ip().octets(), b[4..8]);
            true
        }
        Some(SocketAddr::V6(v6)) => {
            assert_eq!(family, Some(AF_INET6));
            assert!(b.len() >= 28);
            assert_eq!(v6.port(), u16::from_be_bytes([b[2], b[3]]));
            assert_eq!(v6.ip().octets(), b[8..24]);
            true
        }
    }
}

/// The destination id `owner_of` looks at, by the header form.
fn dcid(d: &[u8]) -> Option<&[u8]> {
    if d.first()? & 0x80 != 0 {
        (*d.get(5)? as usize == CID_LEN).then_some(())?;
        d.get(6..6 + CID_LEN)
    } else {
        d.get(1..1 + CID_LEN)
    }
}

fn check_owner(d: &[u8]) -> Option<u8> {
    let (owner, allocs, _) = alloc_observer::observed(|| owner_of(d));
    assert_eq!(allocs, 0, "owner_of allocated");
    let id = dcid(d);
    match owner {
        Some(shard) => {
            let id = id.expect("routed without an id");
            assert!(cid_is_ours(id), "routed a foreign id");
            assert_eq!(id[0], shard, "routed to a shard the id does not name");
        }
        None => assert!(!id.is_some_and(cid_is_ours), "one of our ids not routed"),
    }
    owner
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static WARM: Once = Once::new();
    // The id key is created on first use (once per process, not per datagram).
    WARM.call_once(|| {
        cid_is_ours(&[0; CID_LEN]);
    });
    let (name_len, control_len) = recvmsg_layout();

    // The whole input as the driver's receive buffer, and with input-chosen area lengths.
    check_recvmsg(data, name_len, control_len);
    if let [a, b, rest @ ..] = data {
        check_recvmsg(rest, usize::from(*a) % 48, usize::from(*b) * 2);
    }
    check_sockaddr(data);
    let (seg, allocs, _) = alloc_observer::observed(|| gro_segment(data));
    assert_eq!(allocs, 0, "gro_segment allocated");
    if let Some(s) = seg {
        assert!(s <= i32::MAX as usize, "segment {s} beyond a cmsg's int");
    }

    // The input as a datagram.
    check_owner(data);
    let Some((&shard, rest)) = data.split_first() else {
        return;
    };
    // One of our ids around the rest of the input: short header, then long header.
    let cid = issue_cid(usize::from(shard));
    let mut short = vec![rest.first().map_or(0x40, |f| f & 0x7f)];
    short.extend_from_slice(&cid);
    short.extend_from_slice(rest.get(1..).unwrap_or(&[]));
    assert_eq!(check_owner(&short), Some(shard), "short header not routed");
    let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
    if let Some(f) = rest.first() {
        long[0] = f | 0x80;
    }
    if let Some(v) = rest.get(1..5) {
        long[1..5].copy_from_slice(v);
    }
    long.extend_from_slice(&cid);
    long.extend_from_slice(rest.get(5..).unwrap_or(&[]));
    assert_eq!(check_owner(&long), Some(shard), "long header not routed");
});
