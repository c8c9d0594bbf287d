//! The QUIC driver of a shard (see [`crate::quic`] for the design): UDP sockets with their
//! quinn-proto endpoints, QUIC connections, and their bidirectional streams as ordinary shard
//! connections (`Conn::quic`). Datagrams in: multishot `recvmsg` completions, GRO batches split,
//! strays forwarded to their owning shard, the rest fed to the endpoint. Out: each connection
//! marked dirty is driven once per loop turn (endpoint events, application events, then
//! `poll_transmit` batches as `UDP_SEGMENT` sends) and its timer re-armed on the shard's heap.
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

use std::collections::HashMap;

use quinn_proto::{
    ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, ReadError,
    ReadableError, StreamEvent, StreamId, VarInt, WriteError,
};

use crate::quic::{QuicDial, QuicServer, CODE_DONE, CODE_REFUSED};
use crate::udp::{self, Received, CONTROL_LEN, MAX_GRO_PAYLOAD, NAME_LEN, RECVMSG_OUT_LEN};

/// Provided-buffer group of the shard's UDP receive ring.
const UDP_BGID: u16 = 1;
/// Buffers in the UDP receive ring (each holds one GRO batch of up to 64 KiB).
const UDP_BUF_ENTRIES: u16 = 64;
/// Sends in flight per socket above which connections wait for completions before
/// producing more datagrams.
const MAX_SENDS_IN_FLIGHT: usize = 128;
/// Stream bytes handed to one stream's handler per read pass before other work runs.
const READ_BUDGET: usize = 256 * 1024;
/// Reused send buffers kept per shard.
const SEND_POOL: usize = 256;

fn udp_buf_size() -> u32 {
    (RECVMSG_OUT_LEN + NAME_LEN as usize + CONTROL_LEN + MAX_GRO_PAYLOAD) as u32
}

/// A shard connection that is one bidirectional stream of a QUIC connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct QuicStream {
    q: usize,
    qgen: u32,
    id: StreamId,
    /// quinn refused the last write (flow control / send window): wait for `Writable`.
    blocked: bool,
    /// The first stream of its connection to open here.
    first: bool,
}

impl QuicStream {
    /// What [`ConnMeta::quic_stream`] says of this stream.
    pub(super) fn facts(&self) -> (u64, bool) {
        (u64::from(self.id), self.first)
    }
}

/// One UDP socket and its endpoint.
pub(super) struct QuicSocket {
    gen: u32,
    /// The listener id (server sockets); `None` for the shard's client socket.
    listener: Option<u64>,
    fd: Rc<OwnedFd>,
    local: SocketAddr,
    endpoint: Endpoint,
    hooks: Option<Arc<dyn AcceptHooks>>,
    server: Option<Arc<QuicServer>>,
    opts: ConnOptions,
    recv_op: Option<OpId>,
    gso_segments: usize,
    conns: HashMap<ConnectionHandle, usize>,
    /// Server handshakes in flight (for the Retry threshold).
    handshaking: usize,
    /// Sends in flight, and connections waiting for one to complete.
    sends: usize,
    waiting: Vec<usize>,
    /// No new connections (listener stopped); the socket goes when its connections have.
    stopped: bool,
    hybrid_pq: bool,
}

/// One QUIC connection.
pub(super) struct QuicConn {
    gen: u32,
    sock: usize,
    ch: ConnectionHandle,
    conn: quinn_proto::Connection,
    /// Server: the admission (shared by its streams through `AcceptHooks::share_token`).
    token: Option<AdmitToken>,
    /// Who hears of the handshake's end: the listener's hooks (server) or the dial's.
    opener: Option<Opener>,
    hooks: Option<Arc<dyn AcceptHooks>>,
    opts: ConnOptions,
    /// Streams open for handlers: (stream, shard connection, its generation).
    streams: Vec<(StreamId, usize, u32)>,
    /// Server: accepted streams still waiting for their preface (bytes matched so far, deadline).
    prefaces: Vec<(StreamId, usize, Option<Instant>)>,
    /// Streams finished by us and not yet acknowledged.
    finishing: Vec<StreamId>,
    /// Streams ended here whose peer has not finished sending yet (their bytes are read and
    /// dropped until its FIN or reset).
    half_open: Vec<StreamId>,
    /// Once every stream has ended here: the connection closes at this time even if the peer
    /// keeps half-open streams.
    linger: Option<Instant>,
    had_stream: bool,
    /// Streams opened for handlers so far.
    opened: u64,
    started: Instant,
    hs_deadline: Option<Instant>,
    facts: Option<Box<TlsFacts>>,
    /// Counted in its socket's handshakes in flight (server, until the handshake ends).
    in_flight: bool,
    timer: Option<Instant>,
    dirty: bool,
    closed: bool,
    dial_preface: Vec<u8>,
}

impl QuicConn {
    /// Closes the connection with application code `code` and `reason` (once: `closed` is
    /// set; quinn sends the CONNECTION_CLOSE with the next transmit).
    fn close(&mut self, now: Instant, code: u32, reason: &'static [u8]) {
        self.closed = true;
        self.conn.close(
            now,
            VarInt::from_u32(code),
            bytes::Bytes::from_static(reason),
        );
    }

    /// True if the heap entry `(t, gen)` is this connection's current timer.
    pub(super) fn armed_at(&self, gen: u32, t: Instant) -> bool {
        self.gen == gen && self.timer == Some(t)
    }

    fn preface(&self, socks: &Slab<QuicSocket>) -> Vec<u8> {
        socks
            .get(self.sock)
            .and_then(|s| s.server.as_ref())
            .map(|s| s.preface.clone())
            .unwrap_or_default()
    }
}

/// How a lost QUIC connection ends its streams.
fn lost_reason(e: &ConnectionError) -> CloseReason {
    let crypto = |code: u64| (0x100..=0x1ff).contains(&code);
    match e {
        ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed => {
            CloseReason::PeerClosed
        }
        ConnectionError::ConnectionClosed(c) if crypto(u64::from(c.error_code)) => {
            CloseReason::Tls("quic_crypto_error")
        }
        ConnectionError::TransportError(t) if crypto(u64::from(t.code)) => {
            CloseReason::Tls("quic_crypto_error")
        }
        ConnectionError::ConnectionClosed(c) if u64::from(c.error_code) == 0 => {
            CloseReason::PeerClosed
        }
        ConnectionError::TimedOut => CloseReason::QuicPath("idle_timeout"),
        ConnectionError::Reset => CloseReason::QuicPath("stateless_reset"),
        ConnectionError::VersionMismatch => CloseReason::QuicPath("version_mismatch"),
        ConnectionError::CidsExhausted => CloseReason::QuicPath("cids_exhausted"),
        _ => CloseReason::QuicPath("protocol_violation"),
    }
}

impl Shard {
    /// The UDP receive ring, registered at the first QUIC socket.
    fn ensure_udp_ring(&mut self) -> std::io::Result<()> {
        if self.ring.has_buf_ring(UDP_BGID) {
            return Ok(());
        }
        let bufs = BufRing::new(UDP_BUF_ENTRIES, udp_buf_size(), UDP_BGID)?;
        self.ring.register_buf_ring(bufs)
    }

    fn endpoint_for(
        &self,
        cfg: &quinn_proto::EndpointConfig,
        server: Option<Arc<quinn_proto::ServerConfig>>,
    ) -> Endpoint {
        let mut ecfg = cfg.clone();
        let shard = self.id;
        ecfg.cid_generator(move || Box::new(udp::ShardCids::new(shard)));
        Endpoint::new(Arc::new(ecfg), server, true, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_socket(
        &mut self,
        fd: OwnedFd,
        listener: Option<u64>,
        endpoint: Endpoint,
        hooks: Option<Arc<dyn AcceptHooks>>,
        server: Option<Arc<QuicServer>>,
        opts: ConnOptions,
        gso_segments: usize,
        gro: bool,
        hybrid_pq: bool,
    ) -> std::io::Result<usize> {
        self.ensure_udp_ring()?;
        if gro {
            // Without GRO every datagram is its own completion: slower, still correct.
            let _ = sys::set_udp_gro(&fd, true);
        }
        let local = socket2::SockRef::from(&fd)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("QUIC socket without an inet address"))?;
        let gen = self.gen();
        let s = self.udp_socks.insert(QuicSocket {
            gen,
            listener,
            fd: Rc::new(fd),
            local,
            endpoint,
            hooks,
            server,
            opts,
            recv_op: None,
            gso_segments: gso_segments.clamp(1, 64),
            conns: HashMap::new(),
            handshaking: 0,
            sends: 0,
            waiting: Vec::new(),
            stopped: false,
            hybrid_pq,
        });
        self.arm_udp_recv(s);
        Ok(s)
    }

    /// A QUIC listener's socket on this shard.
    pub(super) fn listen_quic(
        &mut self,
        id: u64,
        fd: OwnedFd,
        hooks: Arc<dyn AcceptHooks>,
        opts: ConnOptions,
        server: Arc<QuicServer>,
    ) {
        if self.drain.is_some() {
            return;
        }
        let endpoint = self.endpoint_for(&server.endpoint, Some(server.server.clone()));
        let (gso, gro, pq) = (server.gso_segments, server.gro, server.hybrid_pq);
        // A socket that cannot be set up receives nothing; its peers time out.
        let _ = self.add_socket(
            fd,
            Some(id),
            endpoint,
            Some(hooks),
            Some(server),
            opts,
            gso,
            gro,
            pq,
        );
    }

    /// Stops new QUIC connections on listener `id` (or every listener); their sockets go once
    /// their connections have.
    pub(super) fn stop_listen_quic(&mut self, id: Option<u64>) {
        let idxs: Vec<usize> = self
            .udp_socks
            .iter()
            .filter(|(_, s)| s.listener.is_some() && id.is_none_or(|id| s.listener == Some(id)))
            .map(|(i, _)| i)
            .collect();
        for s in idxs {
            let sock = &mut self.udp_socks[s];
            sock.stopped = true;
            sock.endpoint.set_server_config(None);
            self.reap_socket(s);
        }
    }

    /// Removes a stopped socket without connections (its receive is cancelled; the fd closes
    /// when the last op holding it completes).
    fn reap_socket(&mut self, s: usize) {
        let Some(sock) = self.udp_socks.get(s) else {
            return;
        };
        if !sock.stopped || !sock.conns.is_empty() {
            return;
        }
        let sock = self.udp_socks.remove(s);
        if let Some(op) = sock.recv_op {
            let _ = self.ring.cancel(op);
        }
    }

    fn arm_udp_recv(&mut self, s: usize) {
        let Some(sock) = self.udp_socks.get(s) else {
            return;
        };
        if sock.recv_op.is_some() {
            return;
        }
        let fd = sock.fd.clone();
        let t = tag(Kind::UdpRecv, s, sock.gen);
        match self
            .ring
            .recv_msg_multi(&fd, UDP_BGID, NAME_LEN, CONTROL_LEN, t)
        {
            Ok(op) => self.udp_socks[s].recv_op = Some(op),
            Err(_) => {
                // Retried by the socket timer.
                let gen = self.udp_socks[s].gen;
                self.timers.push(Reverse((
                    self.now + Duration::from_millis(10),
                    TimerKey::UdpRearm(s, gen),
                )));
            }
        }
    }

    pub(super) fn on_udp_timer(&mut self, s: usize, gen: u32) {
        if self.udp_socks.get(s).is_some_and(|x| x.gen == gen) {
            self.arm_udp_recv(s);
        }
    }

    pub(super) fn on_udp_recv(&mut self, s: usize, gen: u32, c: Completion) {
        if self.udp_socks.get(s).is_none_or(|x| x.gen != gen) {
            return;
        }
        if !c.more {
            self.udp_socks[s].recv_op = None;
        }
        if let Some(buf) = c.buf {
            if c.result >= 0 {
                match udp::parse_recvmsg(buf.as_slice(), NAME_LEN as usize, CONTROL_LEN) {
                    Ok(Received {
                        peer: Some(peer),
                        segment,
                        payload,
                        truncated: false,
                    }) => self.quic_input(s, peer, payload, segment),
                    _ => ShardStats::add(&self.shared.stats.quic_dropped, 1),
                }
            }
        } else if c.result == -libc::ENOBUFS {
            ShardStats::add(&self.shared.stats.recv_no_buffers, 1);
        }
        if !c.more && c.result != -libc::ECANCELED {
            self.arm_udp_recv(s);
        }
    }

    /// One received buffer: each datagram of a GRO batch routed or handled.
    fn quic_input(&mut self, s: usize, peer: SocketAddr, payload: &[u8], segment: Option<usize>) {
        let stride = segment.unwrap_or(payload.len()).max(1);
        let st = &self.shared.stats;
        if segment.is_some() {
            ShardStats::add(&st.quic_gro_batches, 1);
        }
        ShardStats::add(&st.bytes_in, payload.len() as u64);
        let listener = self.udp_socks[s].listener;
        for dgram in payload.chunks(stride) {
            ShardStats::add(&self.shared.stats.quic_datagrams_in, 1);
            // One tag check per datagram: it both routes and filters.
            let owner = udp::owner_of(dgram).map(usize::from);
            if let (Some(owner), Some(lid)) = (owner, listener) {
                if owner != self.id && owner < self.peers.len() {
                    self.forward(owner, lid, peer, dgram);
                    continue;
                }
            }
            // `owner_of` is `Some` for a short header exactly when its id is ours.
            if dgram[0] & 0x80 == 0 && owner.is_none() {
                // A short header naming no id of ours: quinn would drop it too (no stateless
                // reset for ids we never issued); dropped before any copy.
                ShardStats::add(&self.shared.stats.quic_dropped, 1);
                continue;
            }
            if self.rx.capacity() < dgram.len() {
                self.rx.reserve(256 * 1024);
            }
            self.rx.extend_from_slice(dgram);
            let data = self.rx.split();
            self.handle_datagram(s, peer, data);
        }
    }

    fn forward(&mut self, owner: usize, listener: u64, peer: SocketAddr, dgram: &[u8]) {
        let cmd = Command::QuicDatagram {
            listener,
            peer,
            data: bytes::BytesMut::from(dgram),
        };
        if self.peers[owner].is_dead() || self.peers[owner].send_cmd(cmd).is_err() {
            ShardStats::add(&self.shared.stats.quic_dropped, 1);
        } else {
            ShardStats::add(&self.shared.stats.quic_forwarded, 1);
        }
    }

    /// A datagram forwarded by another shard for a connection of listener `listener` here.
    pub(super) fn on_forwarded(&mut self, listener: u64, peer: SocketAddr, data: bytes::BytesMut) {
        let s = self
            .udp_socks
            .iter()
            .find(|(_, x)| x.listener == Some(listener))
            .map(|(i, _)| i);
        ShardStats::add(&self.shared.stats.quic_forwarded_in, 1);
        if let Some(s) = s {
            self.handle_datagram(s, peer, data);
        }
    }

    fn send_buf(&mut self) -> Vec<u8> {
        let mut b = self.send_pool.pop().unwrap_or_default();
        b.clear();
        b
    }

    fn handle_datagram(&mut self, s: usize, peer: SocketAddr, data: bytes::BytesMut) {
        let mut buf = self.send_buf();
        let now = self.now;
        let sock = &mut self.udp_socks[s];
        match sock.endpoint.handle(now, peer, None, None, data, &mut buf) {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(&q) = sock.conns.get(&ch) {
                    self.qconns[q].conn.handle_event(ev);
                    self.quic_dirty(q);
                }
                self.send_pool.push(buf);
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                // Decided at the end of this loop turn: the rest of a ClientHello that spans
                // several Initial datagrams (a hybrid key share) joins this `Incoming` first,
                // so a Retry or a refusal answers the attempt once.
                let gen = sock.gen;
                self.pending_incoming.push((s, gen, incoming));
                self.send_pool.push(buf);
            }
            Some(DatagramEvent::Response(t)) => {
                buf.truncate(t.size);
                self.udp_send(s, buf, t.destination, t.segment_size);
            }
            None => self.send_pool.push(buf),
        }
    }

    /// A new peer: Retry under a handshake flood, admission, then connection state.
    fn quic_incoming(&mut self, s: usize, incoming: quinn_proto::Incoming, mut buf: Vec<u8>) {
        let now = self.now;
        let sock = &mut self.udp_socks[s];
        let peer = incoming.remote_address();
        let retry_above = sock.server.as_ref().map_or(usize::MAX, |c| c.retry_above);
        let hooks = match (&sock.hooks, sock.stopped || self.drain.is_some()) {
            (Some(h), false) => h.clone(),
            _ => {
                let t = sock.endpoint.refuse(incoming, &mut buf);
                ShardStats::add(&self.shared.stats.quic_refused, 1);
                buf.truncate(t.size);
                self.udp_send(s, buf, t.destination, t.segment_size);
                return;
            }
        };
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && sock.handshaking >= retry_above
        {
            let handshaking = sock.handshaking;
            match sock.endpoint.retry(incoming, &mut buf) {
                Ok(t) => {
                    ShardStats::add(&self.shared.stats.quic_retries, 1);
                    if contained(|| hooks.quic_retry(peer, handshaking)).is_none() {
                        ShardStats::add(&self.shared.stats.handler_panics, 1);
                    }
                    buf.truncate(t.size);
                    self.udp_send(s, buf, t.destination, t.segment_size);
                }
                Err(e) => {
                    sock.endpoint.ignore(e.into_incoming());
                    self.send_pool.push(buf);
                }
            }
            return;
        }
        let token = match contained(|| hooks.admit(peer)).unwrap_or(Err(Reject {
            reason: "handler_panic",
        })) {
            Ok(t) => t,
            Err(_) => {
                let sock = &mut self.udp_socks[s];
                let t = sock.endpoint.refuse(incoming, &mut buf);
                ShardStats::add(&self.shared.stats.rejected, 1);
                ShardStats::add(&self.shared.stats.quic_refused, 1);
                buf.truncate(t.size);
                self.udp_send(s, buf, t.destination, t.segment_size);
                return;
            }
        };
        ShardStats::add(&self.shared.stats.accepted, 1);
        let sock = &mut self.udp_socks[s];
        match sock.endpoint.accept(incoming, now, &mut buf, None) {
            Ok((ch, conn)) => {
                self.send_pool.push(buf);
                let opts = sock.opts;
                sock.handshaking += 1;
                let hs_deadline = opts.timeouts.read.map(|d| now + d);
                let q = self.new_qconn(s, ch, conn, opts, hs_deadline);
                let qc = &mut self.qconns[q];
                qc.in_flight = true;
                qc.token = Some(token);
                qc.hooks = Some(hooks);
                self.quic_dirty(q);
            }
            Err(e) => {
                // The first flight already failed (e.g. no common ALPN): the hooks hear it as
                // a failed handshake, with the admission released.
                let reason = match lost_reason(&e.cause) {
                    CloseReason::PeerClosed => CloseReason::Io(libc::ECONNRESET),
                    r => r,
                };
                let meta = ConnMeta {
                    id: 0,
                    peer,
                    local: self.udp_socks[s].local,
                    shard: self.id,
                    outbound: false,
                    tls: None,
                    quic_stream: None,
                };
                ShardStats::add(&self.shared.stats.tls_handshake_failed, 1);
                let told = Opener::Accept { hooks, token }.failed(
                    &meta,
                    HandshakeFailure {
                        reason,
                        detail: e.cause.to_string(),
                        elapsed: Duration::ZERO,
                    },
                );
                if !told {
                    ShardStats::add(&self.shared.stats.handler_panics, 1);
                }
                match e.response {
                    Some(t) => {
                        buf.truncate(t.size);
                        self.udp_send(s, buf, t.destination, t.segment_size);
                    }
                    None => self.send_pool.push(buf),
                }
            }
        }
    }

    fn new_qconn(
        &mut self,
        s: usize,
        ch: ConnectionHandle,
        conn: quinn_proto::Connection,
        opts: ConnOptions,
        hs_deadline: Option<Instant>,
    ) -> usize {
        let gen = self.gen();
        let q = self.qconns.insert(QuicConn {
            gen,
            sock: s,
            ch,
            conn,
            token: None,
            opener: None,
            hooks: None,
            opts,
            streams: Vec::new(),
            prefaces: Vec::new(),
            finishing: Vec::new(),
            half_open: Vec::new(),
            linger: None,
            had_stream: false,
            opened: 0,
            started: self.now,
            hs_deadline,
            facts: None,
            in_flight: false,
            timer: None,
            dirty: false,
            closed: false,
            dial_preface: Vec::new(),
        });
        self.udp_socks[s].conns.insert(ch, q);
        ShardStats::add(&self.shared.stats.quic_conns, 1);
        q
    }

    /// Dials over QUIC from this shard's client socket for `addr`'s family.
    pub(super) fn dial_quic(
        &mut self,
        addr: SocketAddr,
        deadline: Instant,
        opts: ConnOptions,
        hooks: Box<dyn DialHooks>,
        quic: QuicDial,
    ) {
        if self.drain.is_some() {
            self.dial_failed(hooks, DialError::Unavailable("shutdown"));
            return;
        }
        let s = match self.client_socket(addr.is_ipv4(), &quic) {
            Ok(s) => s,
            Err(e) => {
                self.dial_failed(hooks, DialError::Io(e));
                return;
            }
        };
        let now = self.now;
        let sock = &mut self.udp_socks[s];
        match sock
            .endpoint
            .connect(now, quic.client, addr, &quic.server_name)
        {
            Ok((ch, conn)) => {
                let q = self.new_qconn(s, ch, conn, opts, Some(deadline));
                let qc = &mut self.qconns[q];
                qc.opener = Some(Opener::Dial(hooks));
                qc.dial_preface = quic.preface;
                self.quic_dirty(q);
            }
            Err(e) => self.dial_failed(
                hooks,
                DialError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)),
            ),
        }
    }

    fn client_socket(&mut self, v4: bool, quic: &QuicDial) -> std::io::Result<usize> {
        let slot = usize::from(!v4);
        if let Some(s) = self.client_socks[slot] {
            if self.udp_socks.contains(s) {
                return Ok(s);
            }
        }
        let bind: SocketAddr = if v4 {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(bind),
            socket2::Type::DGRAM.cloexec(),
            Some(socket2::Protocol::UDP),
        )?;
        sock.bind(&bind.into())?;
        let endpoint = self.endpoint_for(&quic.endpoint, None);
        let s = self.add_socket(
            sock.into(),
            None,
            endpoint,
            None,
            None,
            ConnOptions::default(),
            quic.gso_segments,
            quic.gro,
            quic.hybrid_pq,
        )?;
        self.client_socks[slot] = Some(s);
        Ok(s)
    }

    /// Marks a connection for driving at the end of this loop turn.
    pub(super) fn quic_dirty(&mut self, q: usize) {
        if let Some(qc) = self.qconns.get_mut(q) {
            if !qc.dirty {
                qc.dirty = true;
                self.quic_dirty.push(q);
            }
        }
    }

    /// Decides on the new peers of this loop turn, then drives every dirty connection
    /// (events, streams, transmits, timers).
    pub(super) fn flush_quic(&mut self) {
        for (s, gen, incoming) in std::mem::take(&mut self.pending_incoming) {
            if self.udp_socks.get(s).is_some_and(|x| x.gen == gen) {
                let buf = self.send_buf();
                self.quic_incoming(s, incoming, buf);
            }
        }
        let mut rounds = 0;
        while let Some(q) = self.quic_dirty.pop() {
            rounds += 1;
            if let Some(qc) = self.qconns.get_mut(q) {
                qc.dirty = false;
                self.drive(q);
            }
            if rounds > 1_000_000 {
                break;
            }
        }
    }

    fn drive(&mut self, q: usize) {
        let gen = self.qconns[q].gen;
        let mut events = std::mem::take(&mut self.qevents);
        loop {
            self.endpoint_events(q);
            let qc = &mut self.qconns[q];
            while let Some(e) = qc.conn.poll() {
                events.push(e);
            }
            if events.is_empty() {
                break;
            }
            for e in events.drain(..) {
                if !self.qlive(q, gen) {
                    break;
                }
                self.quic_event(q, e);
            }
            if !self.qlive(q, gen) {
                events.clear();
                self.qevents = events;
                return;
            }
        }
        self.qevents = events;
        self.transmit(q);
        self.endpoint_events(q);
        self.arm_quic_timer(q);
        if self.qconns[q].conn.is_drained() {
            self.remove_qconn(q);
        }
    }

    fn qlive(&self, q: usize, gen: u32) -> bool {
        self.qconns.get(q).is_some_and(|c| c.gen == gen)
    }

    fn endpoint_events(&mut self, q: usize) {
        let qc = &mut self.qconns[q];
        let sock = &mut self.udp_socks[qc.sock];
        while let Some(ev) = qc.conn.poll_endpoint_events() {
            if let Some(back) = sock.endpoint.handle_event(qc.ch, ev) {
                qc.conn.handle_event(back);
            }
        }
    }

    fn remove_qconn(&mut self, q: usize) {
        let mut qc = self.qconns.remove(q);
        ShardStats::sub(&self.shared.stats.quic_conns, 1);
        let s = qc.sock;
        if let Some(sock) = self.udp_socks.get_mut(s) {
            sock.conns.remove(&qc.ch);
            if qc.in_flight {
                sock.handshaking = sock.handshaking.saturating_sub(1);
            }
        }
        // Streams still open end with the connection.
        for (_, idx, gen) in std::mem::take(&mut qc.streams) {
            if self.conns.get(idx).is_some_and(|c| c.gen == gen) {
                self.finish(idx, CloseReason::QuicPath("connection_gone"));
            }
        }
        if let Some(opener) = qc.opener.take() {
            self.quic_handshake_failed(
                &qc,
                opener,
                CloseReason::QuicPath("connection_gone"),
                String::new(),
            );
        }
        self.reap_socket(s);
    }

    fn quic_event(&mut self, q: usize, e: Event) {
        match e {
            Event::Connected => self.quic_connected(q),
            Event::ConnectionLost { reason } => self.quic_lost(q, &reason),
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                let deadline = self.qconns[q].opts.timeouts.read.map(|d| self.now + d);
                while let Some(id) = self.qconns[q].conn.streams().accept(Dir::Bi) {
                    self.qconns[q].prefaces.push((id, 0, deadline));
                    self.qconns[q].had_stream = true;
                    self.try_preface(q, id);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => {
                if self.qconns[q].prefaces.iter().any(|p| p.0 == id) {
                    self.try_preface(q, id);
                } else if let Some(idx) = self.stream_conn(q, id) {
                    self.service(idx);
                } else if self.qconns[q].half_open.contains(&id) {
                    self.discard_half_open(q, id);
                }
            }
            Event::Stream(StreamEvent::Writable { id }) => {
                if let Some(idx) = self.stream_conn(q, id) {
                    if let Some(qs) = self.conns[idx].quic.as_mut() {
                        qs.blocked = false;
                    }
                    self.service(idx);
                }
            }
            Event::Stream(StreamEvent::Finished { id }) => {
                self.qconns[q].finishing.retain(|f| *f != id);
                self.maybe_close(q);
            }
            Event::Stream(StreamEvent::Stopped { id, .. }) => {
                // The peer reads no more: like a TCP peer that closed, this fails our next
                // write (`WriteError::Stopped`), not what we can still read.
                self.qconns[q].finishing.retain(|f| *f != id);
                if let Some(idx) = self.stream_conn(q, id) {
                    if !self.conns[idx].io.out.is_empty() {
                        self.service(idx);
                    }
                }
                self.maybe_close(q);
            }
            _ => {}
        }
    }

    fn stream_conn(&self, q: usize, id: StreamId) -> Option<usize> {
        let (_, idx, gen) = self.qconns[q].streams.iter().find(|s| s.0 == id)?;
        self.conns
            .get(*idx)
            .is_some_and(|c| c.gen == *gen)
            .then_some(*idx)
    }

    fn quic_connected(&mut self, q: usize) {
        let now = self.now;
        let qc = &mut self.qconns[q];
        let alpn = qc
            .conn
            .crypto_session()
            .handshake_data()
            .and_then(|d| {
                d.downcast::<quinn_proto::crypto::rustls::HandshakeData>()
                    .ok()
            })
            .and_then(|d| d.protocol);
        let hybrid_pq = self.udp_socks[qc.sock].hybrid_pq;
        qc.facts = Some(Box::new(TlsFacts {
            handshake: now.saturating_duration_since(qc.started),
            hybrid_pq,
            group: None,
            alpn,
            resumed: false,
        }));
        qc.hs_deadline = None;
        ShardStats::add(&self.shared.stats.quic_handshakes, 1);
        ShardStats::add(&self.shared.stats.tls_handshakes, 1);
        if qc.hooks.is_some() {
            self.handshake_counted_out(q);
            return;
        }
        // A dial: open its stream, write the preface, open the handler.
        let Some(opener) = qc.opener.take() else {
            return;
        };
        let Some(id) = qc.conn.streams().open(Dir::Bi) else {
            qc.close(now, CODE_REFUSED, b"no stream");
            let failure = CloseReason::Io(libc::ECONNREFUSED);
            self.quic_handshake_failed_ref(q, opener, failure, "the peer allows no stream".into());
            return;
        };
        let preface = std::mem::take(&mut qc.dial_preface);
        if !preface.is_empty() {
            // A fresh stream's window always takes a few bytes.
            let _ = qc.conn.send_stream(id).write(&preface);
        }
        qc.had_stream = true;
        self.open_stream(q, id, opener);
    }

    /// The handshake of `q` failed or was cut short: tell whoever waits for it.
    fn quic_handshake_failed(
        &self,
        qc: &QuicConn,
        opener: Opener,
        reason: CloseReason,
        detail: String,
    ) {
        let Some(sock) = self.udp_socks.get(qc.sock) else {
            return;
        };
        ShardStats::add(&self.shared.stats.tls_handshake_failed, 1);
        if matches!(opener, Opener::Dial(_)) {
            ShardStats::add(&self.shared.stats.dial_failed, 1);
        }
        let meta = ConnMeta {
            id: 0,
            peer: qc.conn.remote_address(),
            local: sock.local,
            shard: self.id,
            outbound: matches!(opener, Opener::Dial(_)),
            tls: None,
            quic_stream: None,
        };
        let detail = if detail.is_empty() {
            reason.to_string()
        } else {
            detail
        };
        let told = opener.failed(
            &meta,
            HandshakeFailure {
                reason,
                detail,
                elapsed: self.now.saturating_duration_since(qc.started),
            },
        );
        if !told {
            ShardStats::add(&self.shared.stats.handler_panics, 1);
        }
    }

    /// The handshake of `q` will not complete: whoever waits for it hears why (the dial's
    /// hooks, or the listener's with the admission token, which is released), once.
    fn handshake_ended(&mut self, q: usize, reason: CloseReason, detail: String) {
        let qc = &mut self.qconns[q];
        if let Some(opener) = qc.opener.take() {
            self.quic_handshake_failed_ref(q, opener, reason, detail);
        } else if let (Some(hooks), Some(token)) = (qc.hooks.clone(), qc.token.take()) {
            self.handshake_counted_out(q);
            self.quic_handshake_failed_ref(q, Opener::Accept { hooks, token }, reason, detail);
        }
    }

    /// A server handshake is no longer in flight (it completed or failed): counted out of its
    /// socket's handshakes once.
    fn handshake_counted_out(&mut self, q: usize) {
        let qc = &mut self.qconns[q];
        if std::mem::take(&mut qc.in_flight) {
            if let Some(sock) = self.udp_socks.get_mut(qc.sock) {
                sock.handshaking = sock.handshaking.saturating_sub(1);
            }
        }
    }

    fn quic_handshake_failed_ref(
        &mut self,
        q: usize,
        opener: Opener,
        reason: CloseReason,
        detail: String,
    ) {
        let qc = &self.qconns[q];
        self.quic_handshake_failed(qc, opener, reason, detail);
    }

    fn quic_lost(&mut self, q: usize, e: &ConnectionError) {
        let reason = lost_reason(e);
        let qc = &mut self.qconns[q];
        qc.closed = true;
        qc.prefaces.clear();
        qc.finishing.clear();
        if qc.facts.is_none() {
            // Lost during the handshake.
            let reason = match reason {
                CloseReason::PeerClosed => CloseReason::Io(libc::ECONNRESET),
                r => r,
            };
            self.handshake_ended(q, reason, e.to_string());
            return;
        }
        for (_, idx, gen) in std::mem::take(&mut self.qconns[q].streams) {
            let Some(conn) = self.conns.get_mut(idx) else {
                continue;
            };
            if conn.gen != gen {
                continue;
            }
            conn.quic = None; // the stream is gone with its connection: nothing to reset
            let r = match &reason {
                CloseReason::PeerClosed if conn.state.mid_frame() => {
                    CloseReason::PeerClosedMidFrame
                }
                r => r.clone(),
            };
            if conn.io.close.is_none() || matches!(conn.io.close, Some((_, true))) {
                conn.io.close = Some((r, false));
            }
            self.service(idx);
        }
        self.qconns[q].token = None;
    }

    /// Reads a stream's preface; a match opens the stream for the handler.
    fn try_preface(&mut self, q: usize, id: StreamId) {
        let preface = self.qconns[q].preface(&self.udp_socks);
        let Some(pos) = self.qconns[q].prefaces.iter().position(|p| p.0 == id) else {
            return;
        };
        let mut seen = self.qconns[q].prefaces[pos].1;
        let mut bad = false;
        let mut ended = false;
        {
            let qc = &mut self.qconns[q];
            let mut rs = qc.conn.recv_stream(id);
            if let Ok(mut chunks) = rs.read(true) {
                while seen < preface.len() {
                    match chunks.next(preface.len() - seen) {
                        Ok(Some(c)) => {
                            if c.bytes[..] != preface[seen..seen + c.bytes.len()] {
                                bad = true;
                                break;
                            }
                            seen += c.bytes.len();
                        }
                        Ok(None) | Err(ReadError::Reset(_)) => {
                            ended = true;
                            break;
                        }
                        Err(ReadError::Blocked) => break,
                    }
                }
                // Flow-control credit goes out with the next transmit (marked dirty below).
                let _ = chunks.finalize();
            };
        }
        self.quic_dirty(q);
        if bad || ended {
            self.refuse_stream(q, id, false);
            return;
        }
        self.qconns[q].prefaces[pos].1 = seen;
        if seen < preface.len() {
            return;
        }
        self.qconns[q].prefaces.remove(pos);
        let qc = &mut self.qconns[q];
        let (Some(hooks), Some(token)) = (qc.hooks.clone(), qc.token.as_mut()) else {
            self.refuse_stream(q, id, false);
            return;
        };
        match hooks.share_token(token) {
            Some(t) => self.open_stream(q, id, Opener::Accept { hooks, token: t }),
            None => self.refuse_stream(q, id, false),
        }
    }

    fn refuse_stream(&mut self, q: usize, id: StreamId, timed_out: bool) {
        let qc = &mut self.qconns[q];
        qc.prefaces.retain(|p| p.0 != id);
        let code = VarInt::from_u32(CODE_REFUSED);
        let _ = qc.conn.send_stream(id).reset(code);
        let _ = qc.conn.recv_stream(id).stop(code);
        if let Some(h) = qc.hooks.clone() {
            let peer = qc.conn.remote_address();
            if contained(|| h.stream_refused(peer, timed_out)).is_none() {
                ShardStats::add(&self.shared.stats.handler_panics, 1);
            }
        }
        ShardStats::add(&self.shared.stats.rejected, 1);
        if qc.streams.is_empty() && qc.prefaces.is_empty() && !qc.closed {
            qc.close(self.now, CODE_REFUSED, b"preface");
        }
        self.quic_dirty(q);
    }

    /// Installs stream `id` of `q` as a shard connection and opens its handler.
    fn open_stream(&mut self, q: usize, id: StreamId, opener: Opener) {
        let qc = &self.qconns[q];
        let sock = &self.udp_socks[qc.sock];
        let fd = sock.fd.clone();
        let (peer, local, opts) = (qc.conn.remote_address(), sock.local, qc.opts);
        let facts = qc.facts.clone();
        let outbound = matches!(opener, Opener::Dial(_));
        let qgen = qc.gen;
        let stream = QuicStream {
            q,
            qgen,
            id,
            blocked: false,
            first: qc.opened == 0,
        };
        self.qconns[q].opened += 1;
        if outbound {
            ShardStats::add(&self.shared.stats.dialed, 1);
        } else {
            ShardStats::add_release(&self.shared.stats.adopted, 1);
        }
        if let Some((idx, gen)) =
            self.install_stream(fd, peer, local, outbound, opts, opener, stream, facts)
        {
            if let Some(qc) = self.qconns.get_mut(q) {
                if qc.gen == qgen && self.conns.get(idx).is_some_and(|c| c.gen == gen) {
                    qc.streams.push((id, idx, gen));
                }
            }
        }
        self.quic_dirty(q);
    }

    /// Reads and drops what the peer still sends on a stream that ended here, until its FIN.
    fn discard_half_open(&mut self, q: usize, id: StreamId) {
        let qc = &mut self.qconns[q];
        let mut done = false;
        {
            let mut rs = qc.conn.recv_stream(id);
            match rs.read(true) {
                Ok(mut chunks) => {
                    loop {
                        match chunks.next(usize::MAX) {
                            Ok(Some(_)) => {}
                            Ok(None) | Err(ReadError::Reset(_)) => {
                                done = true;
                                break;
                            }
                            Err(ReadError::Blocked) => break,
                        }
                    }
                    let _ = chunks.finalize();
                }
                Err(_) => done = true,
            };
        }
        if done {
            qc.half_open.retain(|s| *s != id);
            self.maybe_close(q);
        }
        self.quic_dirty(q);
    }

    /// Closes the QUIC connection once it had a stream, all have ended on both sides and our
    /// sent data is acknowledged — or once the linger after our last stream ended has passed.
    fn maybe_close(&mut self, q: usize) {
        let now = self.now;
        let qc = &mut self.qconns[q];
        if !qc.had_stream || qc.closed || !qc.streams.is_empty() || !qc.prefaces.is_empty() {
            qc.linger = None;
            return;
        }
        let lingered = qc.linger.is_some_and(|t| t <= now);
        if qc.linger.is_none() {
            let grace = qc.opts.timeouts.read.unwrap_or(Duration::from_secs(10));
            qc.linger = Some(now + grace);
        }
        if lingered || (qc.finishing.is_empty() && qc.half_open.is_empty()) {
            qc.close(now, CODE_DONE, b"");
            self.quic_dirty(q);
        }
    }

    /// A stream connection is being removed (`finish`): end its stream — FIN after a graceful
    /// close whose output was all handed to quinn, a reset otherwise.
    pub(super) fn quic_stream_end(
        &mut self,
        idx: usize,
        qs: QuicStream,
        graceful: bool,
        eof: bool,
    ) {
        let Some(qc) = self.qconns.get_mut(qs.q) else {
            return;
        };
        if qc.gen != qs.qgen {
            return;
        }
        qc.streams.retain(|s| s.1 != idx);
        if !qc.closed {
            let code = VarInt::from_u32(CODE_REFUSED);
            if graceful {
                if qc.conn.send_stream(qs.id).finish().is_ok() {
                    qc.finishing.push(qs.id);
                }
                if !eof {
                    // The peer may still be sending: its bytes are dropped until its FIN
                    // (no STOP_SENDING, which would fail its reads of what we sent).
                    qc.half_open.push(qs.id);
                }
            } else {
                let _ = qc.conn.send_stream(qs.id).reset(code);
                let _ = qc.conn.recv_stream(qs.id).stop(code);
            }
        }
        self.maybe_close(qs.q);
        self.quic_dirty(qs.q);
    }

    /// True while a stream connection takes more received bytes (not closing, not paused by
    /// the handler, by pacing or by its own queued output).
    fn quic_wants_read(&self, idx: usize) -> bool {
        let conn = &self.conns[idx];
        let io = &conn.io;
        io.close.is_none()
            && io.want_read
            && !io.eof
            && io.read_hold.is_none_or(|t| t <= self.now)
            && !(io.output_pauses_reading && conn.state.queued() >= self.cfg.out_high_water)
    }

    /// Pulls received stream bytes into the handler, batch by batch, while it wants them;
    /// what stays in quinn holds back the peer through flow control.
    pub(super) fn quic_read(&mut self, idx: usize) {
        let Some(qs) = self.conns[idx].quic else {
            return;
        };
        while self.conns.get(idx).is_some() && self.quic_wants_read(idx) {
            let mut got: Vec<bytes::Bytes> = Vec::new();
            let mut end: Option<bool> = None; // Some(true) = FIN, Some(false) = reset
            let mut budget = READ_BUDGET;
            {
                let Some(qc) = self.qconns.get_mut(qs.q).filter(|c| c.gen == qs.qgen) else {
                    return;
                };
                let mut rs = qc.conn.recv_stream(qs.id);
                match rs.read(true) {
                    Ok(mut chunks) => {
                        while budget > 0 {
                            match chunks.next(budget) {
                                Ok(Some(c)) => {
                                    budget = budget.saturating_sub(c.bytes.len());
                                    got.push(c.bytes);
                                }
                                Ok(None) => {
                                    end = Some(true);
                                    break;
                                }
                                Err(ReadError::Reset(_)) => {
                                    end = Some(false);
                                    break;
                                }
                                Err(ReadError::Blocked) => break,
                            }
                        }
                        // Flow-control credit goes out with the next transmit.
                        let _ = chunks.finalize();
                    }
                    Err(ReadableError::ClosedStream) => end = Some(true),
                    Err(_) => {}
                };
            }
            let more = budget == 0 && end.is_none();
            if !got.is_empty() {
                self.quic_dirty(qs.q);
                ShardStats::add(&self.shared.stats.recv_completions, 1);
            }
            for b in got {
                let conn = &mut self.conns[idx];
                if conn.io.close.is_some() {
                    break;
                }
                let held = conn.io.read_hold.is_some_and(|t| t > self.now);
                if held || !conn.io.deferred.is_empty() {
                    // Pacing holds reads: keep the bytes, delivered as the hold allows.
                    conn.io.deferred.extend_from_slice(&b);
                } else {
                    self.deliver(idx, Chunk::Owned(b));
                }
            }
            match end {
                Some(true) => {
                    while !self.conns[idx].io.deferred.is_empty()
                        && self.conns[idx].io.close.is_none()
                    {
                        let b = self.conns[idx].io.deferred.split().freeze();
                        self.deliver(idx, Chunk::Owned(b));
                    }
                    self.conns[idx].mark_eof();
                }
                Some(false) => {
                    let conn = &mut self.conns[idx];
                    if conn.io.close.is_none() || matches!(conn.io.close, Some((_, true))) {
                        conn.io.close = Some((CloseReason::Io(libc::ECONNRESET), false));
                    }
                }
                None => {}
            }
            if !more {
                break;
            }
        }
    }

    /// Hands queued frames of a stream connection to quinn. False if the connection was
    /// finished.
    pub(super) fn quic_write(&mut self, idx: usize) -> bool {
        let now = self.now;
        let Some(qs) = self.conns[idx].quic else {
            return true;
        };
        if qs.blocked {
            return true;
        }
        let Some(qc) = self.qconns.get_mut(qs.q).filter(|c| c.gen == qs.qgen) else {
            return true;
        };
        let conn = &mut self.conns[idx];
        let mut written = 0usize;
        let mut frames = 0u64;
        let mut failed = None;
        let mut blocked = false;
        while let Some(seg) = conn.io.out.front_mut() {
            let mut send = qc.conn.send_stream(qs.id);
            let res = match seg.unsent_body_bytes() {
                Some(b) if !b.is_empty() => {
                    let mut chunks = [b];
                    send.write_chunks(&mut chunks).map(|w| w.bytes)
                }
                _ => {
                    let (h, b) = seg.parts();
                    if h.is_empty() {
                        send.write(b)
                    } else {
                        send.write(h)
                    }
                }
            };
            match res {
                Ok(n) => {
                    seg.advance(n);
                    written += n;
                    if seg.remaining() == 0 {
                        frames += 1;
                        if let Some(s) = conn.io.out.pop_front() {
                            if let Body::Bytes(b) = s.into_body() {
                                frame::recycle(b);
                            }
                        }
                    } else if n == 0 {
                        blocked = true;
                        break;
                    }
                }
                Err(WriteError::Blocked) => {
                    blocked = true;
                    break;
                }
                Err(WriteError::Stopped(_)) => {
                    failed = Some(libc::EPIPE);
                    break;
                }
                Err(WriteError::ClosedStream) => {
                    failed = Some(libc::EPIPE);
                    break;
                }
            }
        }
        if blocked {
            if let Some(q) = conn.quic.as_mut() {
                q.blocked = true;
            }
        }
        if written > 0 {
            conn.state.handle_sent(now, written);
            let st = &self.shared.stats;
            ShardStats::add(&st.bytes_out, written as u64);
            ShardStats::add(&st.frames_out, frames);
            if let Some(h) = conn.handler.as_mut() {
                if contained(|| h.on_sent(written)).is_none() {
                    conn.io.close = Some((CloseReason::HandlerPanic, false));
                    ShardStats::add(&self.shared.stats.handler_panics, 1);
                }
            }
            self.quic_dirty(qs.q);
        }
        if let Some(e) = failed {
            let conn = &mut self.conns[idx];
            if conn.io.close.is_none() || matches!(conn.io.close, Some((_, true))) {
                conn.io.close = Some((CloseReason::Io(e), false));
            }
            return true;
        }
        let conn = &self.conns[idx];
        if written > 0 && conn.state.queued() < self.cfg.chunk_bytes / 2 && conn.io.close.is_none()
        {
            self.call(idx, |h, ctx| h.on_writable(ctx));
            let conn = &self.conns[idx];
            if !conn.io.out.is_empty() && !blocked {
                return self.quic_write(idx);
            }
        }
        true
    }

    /// Sends everything quinn has for `q` (GSO batches), unless the socket has too many sends
    /// in flight (then `q` waits for a completion).
    fn transmit(&mut self, q: usize) {
        let now = self.now;
        let s = self.qconns[q].sock;
        loop {
            let sock = &mut self.udp_socks[s];
            if sock.sends >= MAX_SENDS_IN_FLIGHT {
                if !sock.waiting.contains(&q) {
                    sock.waiting.push(q);
                }
                return;
            }
            let segs = sock.gso_segments;
            let mut buf = self.send_pool.pop().unwrap_or_default();
            buf.clear();
            match self.qconns[q].conn.poll_transmit(now, segs, &mut buf) {
                Some(t) => {
                    buf.truncate(t.size);
                    self.udp_send(s, buf, t.destination, t.segment_size);
                }
                None => {
                    self.send_pool.push(buf);
                    return;
                }
            }
        }
    }

    fn udp_send(&mut self, s: usize, buf: Vec<u8>, to: SocketAddr, segment: Option<usize>) {
        let sock = &mut self.udp_socks[s];
        let n = buf.len();
        let seg = segment.filter(|&g| g < n);
        let count = seg.map_or(1, |g| n.div_ceil(g.max(1)));
        let send = sys::UdpSend::new(buf, to, seg.map(|g| g as u16));
        let t = tag(Kind::UdpSend, s, sock.gen);
        let fd = sock.fd.clone();
        match self.ring.send_to(&fd, send, t) {
            Ok(_) => {
                self.udp_socks[s].sends += 1;
                let st = &self.shared.stats;
                ShardStats::add(&st.quic_datagrams_out, count as u64);
                ShardStats::add(&st.send_submissions, 1);
                if count > 1 {
                    ShardStats::add(&st.quic_gso_sends, 1);
                }
            }
            Err(_) => ShardStats::add(&self.shared.stats.quic_send_errors, 1),
        }
    }

    pub(super) fn on_udp_send(&mut self, s: usize, gen: u32, c: Completion) {
        if let Some(Resource::SendTo(_, send)) = c.res {
            if self.send_pool.len() < SEND_POOL {
                self.send_pool.push(send.into_buf());
            }
        }
        let Some(sock) = self.udp_socks.get_mut(s).filter(|x| x.gen == gen) else {
            return;
        };
        sock.sends = sock.sends.saturating_sub(1);
        if c.result < 0 {
            ShardStats::add(&self.shared.stats.quic_send_errors, 1);
            if c.result == -libc::EIO && sock.gso_segments > 1 {
                // The path refused a GSO batch (no checksum offload): send datagrams one by
                // one from now on; quinn retransmits what was lost.
                sock.gso_segments = 1;
            }
        } else {
            ShardStats::add(&self.shared.stats.bytes_out, c.result as u64);
        }
        let waiting = std::mem::take(&mut sock.waiting);
        for q in waiting {
            self.quic_dirty(q);
        }
    }

    fn arm_quic_timer(&mut self, q: usize) {
        let qc = &mut self.qconns[q];
        let mut next = qc.conn.poll_timeout();
        let extra = qc.hs_deadline.into_iter().chain(qc.linger);
        for d in extra.chain(qc.prefaces.iter().filter_map(|p| p.2)) {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        if let Some(d) = next {
            if qc.timer.is_none_or(|t| d < t) {
                qc.timer = Some(d);
                self.timers.push(Reverse((d, TimerKey::Quic(q, qc.gen))));
            }
        }
    }

    pub(super) fn on_quic_timer(&mut self, q: usize, gen: u32, t: Instant) {
        let now = self.now;
        let Some(qc) = self.qconns.get_mut(q) else {
            return;
        };
        if qc.gen != gen || qc.timer != Some(t) {
            return;
        }
        qc.timer = None;
        if qc.conn.poll_timeout().is_some_and(|d| d <= now) {
            qc.conn.handle_timeout(now);
        }
        if qc.hs_deadline.is_some_and(|d| d <= now) && qc.facts.is_none() {
            qc.hs_deadline = None;
            qc.close(now, CODE_REFUSED, b"handshake timeout");
            let reason = CloseReason::Timeout(TimeoutKind::Handshake);
            self.handshake_ended(q, reason, String::new());
        }
        let expired: Vec<StreamId> = self.qconns[q]
            .prefaces
            .iter()
            .filter(|p| p.2.is_some_and(|d| d <= now))
            .map(|p| p.0)
            .collect();
        for id in expired {
            self.refuse_stream(q, id, true);
        }
        if self.qconns[q].linger.is_some_and(|d| d <= now) {
            self.maybe_close(q);
        }
        self.quic_dirty(q);
    }

    /// QUIC dials still handshaking, and connections with sent data not yet acknowledged
    /// (a graceful drain waits for them).
    pub(super) fn quic_busy(&self) -> bool {
        self.qconns
            .iter()
            .any(|(_, c)| !c.closed && (c.opener.is_some() || !c.finishing.is_empty()))
    }

    /// Fails pending QUIC dials and closes every QUIC connection (shutdown), sending the
    /// closes once.
    pub(super) fn quic_shutdown(&mut self) {
        let now = self.now;
        for (s, gen, incoming) in std::mem::take(&mut self.pending_incoming) {
            if let Some(sock) = self.udp_socks.get_mut(s).filter(|x| x.gen == gen) {
                sock.endpoint.ignore(incoming);
            }
        }
        let qs: Vec<usize> = self.qconns.iter().map(|(i, _)| i).collect();
        for q in qs {
            let qc = &mut self.qconns[q];
            if !qc.closed {
                qc.close(now, CODE_REFUSED, b"shutdown");
            }
            if let Some(opener) = qc.opener.take() {
                self.quic_handshake_failed_ref(q, opener, CloseReason::Shutdown, String::new());
            }
            self.transmit(q);
        }
        let _ = self.ring.submit();
    }
}
