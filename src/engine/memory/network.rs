//! [`MemoryNetwork`]: the in-process "network" memory engines share — a registry of listeners
//! by `SocketAddr` (port 0 ⇒ a free fake port), the dial path (refused when nobody listens,
//! hanging while the network is partitioned or the listener's backlog is full) and the
//! test-side fault hooks over every open connection ([`Link`]s, partition / heal).
//!
//! No socket, file descriptor or thread is involved: a connection is a `tokio::io::duplex`
//! pipe pair, so a paused tokio clock (`tokio::time::pause`) drives every timeout.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{mpsc, watch};

use crate::engine::memory::pipe::{Link, LinkState, MemoryStream, NetFlags};
use crate::engine::memory::MemoryEngine;
use crate::engine::setup::EngineSetup;
use crate::error::TransportError;

/// Bytes in flight per direction of one connection by default (like a socket buffer).
pub const DEFAULT_PIPE_CAPACITY: usize = 64 * 1024;
/// Connections a listener queues before `accept` by default (like a listen backlog).
pub const DEFAULT_BACKLOG: usize = 1024;
/// Fake ports for listeners bound to port 0: above the kernel's default ephemeral range, so
/// a port a test got from a real socket never names a memory listener by accident.
const LISTEN_PORTS: (u16, u16) = (61_000, u16::MAX);
/// Fake local ports of dialed connections (the kernel's default ephemeral range).
const DIAL_PORTS: (u16, u16) = (32_768, 60_999);

/// An in-process network: listeners registered by address, connections as in-process pipes,
/// and fault hooks. Cheap to clone (one `Arc`); engines made from clones of one network (or
/// with [`MemoryNetwork::engine`]) reach each other's listeners.
#[derive(Clone, Debug)]
pub struct MemoryNetwork {
    inner: Arc<NetInner>,
}

#[derive(Debug)]
struct NetInner {
    state: Mutex<NetState>,
    flags: Arc<NetFlags>,
    /// `true` while partitioned; dials wait on it.
    partition: watch::Sender<bool>,
    pipe_capacity: usize,
    backlog: usize,
    next_listener_id: AtomicU64,
}

#[derive(Debug)]
struct NetState {
    listeners: HashMap<SocketAddr, ListenerSlot>,
    next_listen_port: u16,
    next_dial_port: u16,
    links: Vec<Weak<LinkState>>,
}

#[derive(Debug)]
struct ListenerSlot {
    id: u64,
    tx: mpsc::Sender<MemoryStream>,
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryNetwork {
    /// A new, empty network with [`DEFAULT_PIPE_CAPACITY`] and [`DEFAULT_BACKLOG`].
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_PIPE_CAPACITY, DEFAULT_BACKLOG)
    }

    /// A new network whose connections buffer at most `pipe_capacity` bytes per direction
    /// and whose listeners queue at most `backlog` connections before `accept`.
    pub fn with_limits(pipe_capacity: usize, backlog: usize) -> Self {
        Self {
            inner: Arc::new(NetInner {
                state: Mutex::new(NetState {
                    listeners: HashMap::new(),
                    next_listen_port: LISTEN_PORTS.0,
                    next_dial_port: DIAL_PORTS.0,
                    links: Vec::new(),
                }),
                flags: Arc::new(NetFlags::default()),
                partition: watch::channel(false).0,
                pipe_capacity: pipe_capacity.max(1),
                backlog: backlog.max(1),
                next_listener_id: AtomicU64::new(1),
            }),
        }
    }

    /// Builds a memory engine on this network from `setup` (config, metrics, TLS configs).
    pub fn engine(&self, setup: EngineSetup) -> Result<MemoryEngine, TransportError> {
        Ok(MemoryEngine::new(setup.build_shared()?, self))
    }

    fn state(&self) -> MutexGuard<'_, NetState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Binds a raw listener at `addr` (port 0 ⇒ a free fake port): it yields the listening
    /// ends of connections dialed to it, as raw byte streams (a misbehaving server in a test).
    /// `AddrInUse` if something listens there already.
    pub fn bind_raw(&self, addr: SocketAddr) -> io::Result<RawListener> {
        let mut st = self.state();
        let addr = if addr.port() == 0 {
            let port = free_port(&mut st, addr.ip(), true);
            SocketAddr::new(addr.ip(), port)
        } else {
            addr
        };
        if st.listeners.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("memory address {addr} is in use"),
            ));
        }
        let id = self.inner.next_listener_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.backlog);
        st.listeners.insert(addr, ListenerSlot { id, tx });
        Ok(RawListener {
            net: self.clone(),
            id,
            addr,
            rx,
        })
    }

    /// Connects a raw byte stream to `addr` from the loopback address of its family.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<MemoryStream> {
        self.connect_from(None, addr).await
    }

    /// Connects a raw byte stream to `addr` from `from` (any IP; `None` ⇒ the loopback
    /// address of `addr`'s family) on a fresh fake port. Refused (`ConnectionRefused`) if
    /// nobody listens at `addr`; waits while the network is partitioned or the listener's
    /// backlog is full (bound it with a timeout).
    pub async fn connect_from(
        &self,
        from: Option<IpAddr>,
        addr: SocketAddr,
    ) -> io::Result<MemoryStream> {
        let mut healed = self.inner.partition.subscribe();
        // Blackholed while partitioned, like a dial into a dead network.
        let _ = healed.wait_for(|partitioned| !partitioned).await;
        let (tx, server_end, client_end) = {
            let mut st = self.state();
            let slot = match st.listeners.get(&addr) {
                Some(s) => s,
                None => {
                    let any = SocketAddr::new(unspecified(addr.ip()), addr.port());
                    match st.listeners.get(&any) {
                        Some(s) => s,
                        None => return Err(refused(addr)),
                    }
                }
            };
            let tx = slot.tx.clone();
            let from = from.unwrap_or_else(|| loopback_of(addr.ip()));
            let port = free_port(&mut st, from, false);
            let local = SocketAddr::new(from, port);
            let (client_end, server_end) = MemoryStream::pair(
                local,
                addr,
                self.inner.pipe_capacity,
                self.inner.flags.clone(),
            );
            st.links.retain(|l| l.strong_count() > 0);
            st.links.push(Arc::downgrade(client_end.link_state()));
            (tx, server_end, client_end)
        };
        // A full backlog holds the dial (like dropped SYNs) until there is room.
        tx.send(server_end).await.map_err(|_| refused(addr))?;
        Ok(client_end)
    }

    /// Every open connection's fault handle.
    pub fn links(&self) -> Vec<Link> {
        let mut st = self.state();
        st.links.retain(|l| l.strong_count() > 0);
        st.links
            .iter()
            .filter_map(Weak::upgrade)
            .map(Link)
            .collect()
    }

    /// The fault handle of the connection between `a` and `b` (either order), e.g.
    /// `net.link(conn.info().local_addr, conn.info().peer_addr)`.
    pub fn link(&self, a: SocketAddr, b: SocketAddr) -> Option<Link> {
        self.links().into_iter().find(|l| {
            let (c, s) = (l.client_addr(), l.server_addr());
            (c == a && s == b) || (c == b && s == a)
        })
    }

    /// Partitions the network: every open connection is frozen (no byte moves) and new dials
    /// hang (a dial then fails with `Timeout{op: Dial}` at its deadline) until
    /// [`heal`](Self::heal).
    pub fn partition(&self) {
        self.inner.flags.partitioned.store(true, Ordering::Release);
        self.inner.partition.send_replace(true);
    }

    /// Ends a [`partition`](Self::partition): frozen traffic and waiting dials resume (links
    /// frozen one by one with [`Link::freeze`] stay frozen).
    pub fn heal(&self) {
        self.inner.flags.partitioned.store(false, Ordering::Release);
        self.inner.partition.send_replace(false);
        for l in self.links() {
            l.0.wake_all();
        }
    }

    /// True while partitioned.
    pub fn is_partitioned(&self) -> bool {
        self.inner.flags.partitioned.load(Ordering::Acquire)
    }

    /// Addresses listened on right now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.state().listeners.keys().copied().collect()
    }

    fn unbind(&self, addr: SocketAddr, id: u64) {
        let mut st = self.state();
        if st.listeners.get(&addr).is_some_and(|s| s.id == id) {
            st.listeners.remove(&addr);
        }
    }
}

/// A listener of raw [`MemoryStream`]s (see [`MemoryNetwork::bind_raw`]). Dropping it stops
/// listening: queued, unaccepted connections are closed and later dials are refused.
#[derive(Debug)]
pub struct RawListener {
    net: MemoryNetwork,
    id: u64,
    addr: SocketAddr,
    rx: mpsc::Receiver<MemoryStream>,
}

impl RawListener {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening end of the next connection. `ConnectionAborted` only if the network's
    /// registry dropped this listener (never while it is alive).
    pub async fn accept(&mut self) -> io::Result<MemoryStream> {
        self.rx.recv().await.ok_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionAborted, "memory listener closed")
        })
    }
}

impl Drop for RawListener {
    fn drop(&mut self) {
        self.net.unbind(self.addr, self.id);
    }
}

fn refused(addr: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("connection refused: nothing listens at memory address {addr}"),
    )
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

fn loopback_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// The next fake port of its range (listen or dial) not listened on at `ip` (or the
/// unspecified address).
fn free_port(st: &mut NetState, ip: IpAddr, listen: bool) -> u16 {
    let (lo, hi) = if listen { LISTEN_PORTS } else { DIAL_PORTS };
    let mut port = lo;
    // Bounded: with every port of the range listened on, the last one tried is shared.
    for _ in lo..=hi {
        let next = if listen {
            &mut st.next_listen_port
        } else {
            &mut st.next_dial_port
        };
        port = *next;
        *next = if port >= hi { lo } else { port + 1 };
        let taken = st.listeners.contains_key(&SocketAddr::new(ip, port))
            || st
                .listeners
                .contains_key(&SocketAddr::new(unspecified(ip), port));
        if !taken {
            return port;
        }
    }
    port
}
