//! Unix-domain stream sockets on the shard: the peer credentials (`SO_PEERCRED`) read at accept
//! before any receive is armed, the process's own uid, and the synthetic address a Unix peer
//! carries wherever a [`SocketAddr`] is expected ([`ConnMeta::peer`](crate::ConnMeta),
//! admission keys): `[100::<uid>]:0`.
//!
//! `100::/64` is the IPv6 discard-only prefix (RFC 6666): no real peer ever has such an
//! address, so these keys never collide with a TCP peer's, and every connection of one uid
//! shares one key (per-peer caps and rate limits apply per uid). The uid is the low 32 bits.
#![forbid(unsafe_code)]

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsFd;

use crate::sys;

/// The credentials of the process at the other end of a Unix-domain socket, as the kernel
/// recorded them when it connected (or, seen from a dialer, when the listener called `listen`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerCred {
    /// Process id (0 if the kernel could not name it, e.g. from another pid namespace).
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

impl PeerCred {
    /// The peer's synthetic address (see [`uid_addr`]).
    pub fn addr(&self) -> SocketAddr {
        uid_addr(self.uid)
    }
}

/// `SO_PEERCRED` of a connected Unix-domain stream socket. (Linux answers this option on other
/// socket families too, with no meaningful credentials: callers check the domain first, as the
/// accept path does.)
pub fn peer_cred(sock: &impl AsFd) -> io::Result<PeerCred> {
    let (pid, uid, gid) = sys::peer_cred(sock.as_fd())?;
    Ok(PeerCred { pid, uid, gid })
}

/// The effective uid of this process.
pub fn current_uid() -> u32 {
    sys::euid()
}

/// The synthetic address of a Unix-domain peer running as `uid`: `[100::<uid>]:0`.
pub fn uid_addr(uid: u32) -> SocketAddr {
    let ip = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, (uid >> 16) as u16, uid as u16);
    SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, 0))
}

/// The uid a synthetic address names, if it is one (see [`uid_addr`]).
pub fn addr_uid(addr: &SocketAddr) -> Option<u32> {
    match addr {
        SocketAddr::V6(a) if a.port() == 0 => {
            let s = a.ip().segments();
            (s[..6] == [0x100, 0, 0, 0, 0, 0]).then(|| (u32::from(s[6]) << 16) | u32::from(s[7]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn uid_addresses_round_trip_and_sit_in_the_discard_prefix() {
        for uid in [0, 1, 1000, 65534, 0x1234_5678, u32::MAX] {
            let a = uid_addr(uid);
            assert_eq!(addr_uid(&a), Some(uid));
            let SocketAddr::V6(v6) = a else { panic!() };
            assert_eq!(&v6.ip().segments()[..4], &[0x100, 0, 0, 0]);
        }
        assert_eq!(uid_addr(1000).to_string(), "[100::3e8]:0");
        assert_eq!(addr_uid(&"127.0.0.1:0".parse().unwrap()), None);
        assert_eq!(addr_uid(&"[100::1]:80".parse().unwrap()), None);
    }

    #[test]
    fn peer_cred_names_this_process_on_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let c = peer_cred(&a).unwrap();
        assert_eq!(c.uid, current_uid());
        assert_eq!(c.pid, std::process::id() as i32);
        assert_eq!(peer_cred(&b).unwrap(), c);
        assert_eq!(c.addr(), uid_addr(current_uid()));
    }
}
