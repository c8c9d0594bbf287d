//! Admission under rate debt and the per-peer admission key, on `Policy::admit_at` with a
//! simulated clock and synthetic addresses (no sockets):
//!
//! - a global-ingress debt (one heavy reader) never refuses a new connection: pacing slows the
//!   reads, it does not lock newcomers out; a per-peer debt still refuses that same peer (and
//!   only it) with `rate_limited`;
//! - per-peer caps and per-peer buckets key IPv4 peers by address, IPv4-mapped IPv6 peers as
//!   IPv4, and other IPv6 peers by their /64, so one /64 cannot walk around them; the permit
//!   still reports the real address. The synthetic addresses of Unix peers (`100::<uid>`) and
//!   of Arti name targets (`fd00:7274::<hash>`) stay exact.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ron_transport::policy::{peer_key, Policy};
use ron_transport::{Config, ConfigHandle, RejectReason, TransportError, TransportMetrics};

const S: u64 = 1_000_000_000;
const MIB: u64 = 1024 * 1024;

fn setup(f: impl FnOnce(&mut Config)) -> Arc<Policy> {
    let mut c = Config::default();
    f(&mut c);
    Policy::new(
        ConfigHandle::new(c.validate().unwrap()),
        TransportMetrics::new(),
    )
}

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, d))
}

fn v6(s: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
    ))
}

fn rejected(p: &Policy, r: RejectReason) -> u64 {
    p.metrics().rejected_count(r)
}

// ------------------------------------------------------------ global ingress debt

/// One heavy reader drives the global ingress bucket seconds into debt; new connections from
/// other peers (and from the heavy reader's own address) are still admitted, and their reads
/// are paced behind the debt instead.
#[test]
fn global_ingress_debt_admits_newcomers() {
    let p = setup(|c| c.global_ingress_bytes_per_sec = MIB);
    let t = 10 * S;
    let heavy = p.admit_at(v4(1), t).unwrap();
    // Burst = max(rate/10, max_frame) = 1 MiB; 4 MiB read puts the global bucket 3 s in debt.
    assert_eq!(heavy.pace_ingress(4 * MIB, t), Duration::from_secs(3));
    assert_eq!(p.global_ingress().debt(t + S), Duration::from_secs(2));

    let newcomer = p
        .admit_at(v4(2), t + S)
        .expect("a global-ingress debt must not refuse another peer");
    let same_addr = p
        .admit_at(v4(1), t + S)
        .expect("nor the heavy reader's own address (no per-peer rate set)");
    assert_eq!(rejected(&p, RejectReason::RateLimited), 0);
    assert_eq!(rejected(&p, RejectReason::PeerLimit), 0);
    assert_eq!(p.conn_count(), 3);
    // The newcomer's first read waits behind the global debt: pacing, not lockout.
    let wait = newcomer.pace_ingress(1024, t + S);
    assert!(
        wait > Duration::from_secs(2) && wait < Duration::from_millis(2010),
        "paced behind the 2 s debt, not refused: {wait:?}"
    );
    drop((heavy, same_addr));
}

/// A per-peer ingress debt still refuses new connections from that peer (documented contract:
/// `rejected_total{reason="rate_limited"}` at admission), and from nobody else; the refusal
/// holds no cap slot and the peer is admitted again once its debt is repaid.
#[test]
fn per_peer_ingress_debt_refuses_only_that_peer() {
    let p = setup(|c| {
        c.per_peer_bytes_per_sec = MIB;
        c.global_ingress_bytes_per_sec = MIB;
    });
    let t = 10 * S;
    let heavy = p.admit_at(v4(1), t).unwrap();
    assert_eq!(heavy.pace_ingress(3 * MIB, t), Duration::from_secs(2));
    let e = p.admit_at(v4(1), t).unwrap_err();
    assert!(matches!(e, TransportError::RateLimited));
    assert_eq!(e.kind(), "rate_limited");
    assert_eq!(rejected(&p, RejectReason::RateLimited), 1);
    assert_eq!(p.conn_count(), 1, "a refused admission holds no cap slot");
    let _other = p.admit_at(v4(2), t).expect("another peer is admitted");
    assert_eq!(rejected(&p, RejectReason::RateLimited), 1);
    let _again = p.admit_at(v4(1), t + 2 * S).expect("debt repaid");
    assert!(p
        .metrics()
        .render()
        .contains("rejected_total{reason=\"rate_limited\"} 1"));
}

// ------------------------------------------------------------ per-peer key

#[test]
fn peer_key_rules() {
    // IPv4: the full address.
    assert_eq!(peer_key(v4(7)), v4(7));
    // IPv4-mapped IPv6: the IPv4 address.
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
    assert_eq!(peer_key(mapped), v4(7));
    // IPv6: the /64.
    assert_eq!(
        peer_key(v6([0x2001, 0xdb8, 1, 2, 0xdead, 0xbeef, 3, 4])),
        v6([0x2001, 0xdb8, 1, 2, 0, 0, 0, 0])
    );
    assert_eq!(
        peer_key(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    );
    // Synthetic addresses stay exact: Unix peers (`100::<uid>`, RFC 6666 discard-only /64)
    // and Arti name targets (`fd00:7274::<64-bit hash>`).
    let uid = v6([0x100, 0, 0, 0, 0, 0, 0, 1000]);
    assert_eq!(peer_key(uid), uid);
    let name = v6([0xfd00, 0x7274, 0, 0, 0x1234, 0x5678, 0x9abc, 0xdef0]);
    assert_eq!(peer_key(name), name);
}

/// Two addresses in one /64 count against one per-peer cap; a third address in another /64 is
/// a different peer. The permits report the real addresses.
#[test]
fn per_peer_cap_keys_ipv6_by_slash_64() {
    let p = setup(|c| c.per_peer_max_conns = 2);
    let a = v6([0x2001, 0xdb8, 0xaa, 0xbb, 0, 0, 0, 1]);
    let b = v6([0x2001, 0xdb8, 0xaa, 0xbb, 0x1111, 0x2222, 0x3333, 0x4444]);
    let c = v6([0x2001, 0xdb8, 0xaa, 0xbb, 0xffff, 0xffff, 0xffff, 0xffff]);
    let other = v6([0x2001, 0xdb8, 0xaa, 0xbc, 0, 0, 0, 1]);
    let pa = p.admit(a).unwrap();
    let pb = p.admit(b).unwrap();
    assert_eq!(pa.peer(), a, "permit keeps the real address");
    assert_eq!(pb.peer(), b);
    assert_eq!(pa.peer_key(), pb.peer_key());
    assert_eq!(p.peer_conn_count(a), 2, "both count against one /64");
    assert_eq!(p.peer_conn_count(c), 2);
    assert_eq!(p.tracked_peers(), 1);
    let e = p.admit(c).unwrap_err();
    assert!(matches!(e, TransportError::PeerLimit));
    assert_eq!(rejected(&p, RejectReason::PeerLimit), 1);
    let _o = p.admit(other).expect("another /64 is another peer");
    assert_eq!(p.tracked_peers(), 2);
    drop(pa);
    let _c = p.admit(c).expect("slot of the /64 released");
    drop(pb);
    assert_eq!(p.peer_conn_count(a), 1);
}

/// An IPv4 peer arriving as an IPv4-mapped IPv6 address (dual-stack listener) is the same peer
/// as over IPv4; distinct IPv4 addresses stay distinct peers.
#[test]
fn per_peer_cap_keys_mapped_ipv6_as_ipv4() {
    let p = setup(|c| c.per_peer_max_conns = 1);
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
    let pm = p.admit(mapped).unwrap();
    assert_eq!(pm.peer(), mapped);
    assert!(matches!(p.admit(v4(9)), Err(TransportError::PeerLimit)));
    let _n = p.admit(v4(10)).expect("next IPv4 address is another peer");
    drop(pm);
    let _v = p.admit(v4(9)).unwrap();
    assert_eq!(rejected(&p, RejectReason::PeerLimit), 1);
}

/// Unix peers' synthetic uid addresses all sit in `100::/64` but stay one peer per uid.
#[test]
fn per_peer_cap_keeps_unix_uids_apart() {
    let p = setup(|c| c.per_peer_max_conns = 1);
    let uid = |u: u16| v6([0x100, 0, 0, 0, 0, 0, 0, u]);
    let _a = p.admit(uid(1000)).unwrap();
    let _b = p.admit(uid(1001)).expect("another uid is another peer");
    assert!(matches!(p.admit(uid(1000)), Err(TransportError::PeerLimit)));
}

/// The per-peer rate bucket is shared by the whole /64: one address's reads put the prefix in
/// debt, which paces and refuses a sibling address.
#[test]
fn per_peer_bucket_is_shared_by_the_slash_64() {
    let p = setup(|c| c.per_peer_bytes_per_sec = MIB);
    let t = 5 * S;
    let a = p
        .admit_at(v6([0x2001, 0xdb8, 7, 7, 0, 0, 0, 1]), t)
        .unwrap();
    let b = p
        .admit_at(v6([0x2001, 0xdb8, 7, 7, 0, 0, 0, 2]), t)
        .unwrap();
    assert_eq!(a.pace_ingress(MIB, t), Duration::ZERO);
    assert_eq!(
        b.pace_ingress(MIB, t),
        Duration::from_secs(1),
        "same bucket"
    );
    assert_eq!(b.pace_egress(MIB, t), Duration::ZERO, "egress is its own");
    let e = p
        .admit_at(v6([0x2001, 0xdb8, 7, 7, 0, 0, 0, 3]), t)
        .unwrap_err();
    assert_eq!(e.reject_reason(), Some(RejectReason::RateLimited));
    let _c = p
        .admit_at(v6([0x2001, 0xdb8, 7, 8, 0, 0, 0, 3]), t)
        .expect("another /64");
}
