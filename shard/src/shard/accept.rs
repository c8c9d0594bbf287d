//! Accept and hand-off: listeners (multishot accept), admission through the caller's hook
//! before any buffer or read, the least-loaded hand-off to a shard, and installing an admitted
//! or dialed socket as a connection on its owning shard.
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

impl Shard {
    pub(super) fn listen(
        &mut self,
        id: u64,
        fd: OwnedFd,
        hooks: Arc<dyn AcceptHooks>,
        opts: ConnOptions,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
        if self.drain.is_some() {
            return;
        }
        let gen = self.gen();
        let idx = self.listeners.insert(ListenerSlot {
            gen,
            id,
            fd: Rc::new(fd),
            hooks,
            opts,
            op: None,
            tls,
        });
        self.arm_accept(idx);
    }

    pub(super) fn arm_accept(&mut self, idx: usize) {
        let Some(l) = self.listeners.get(idx) else {
            return;
        };
        let fd = l.fd.clone();
        let t = tag(Kind::Accept, idx, l.gen);
        match self.ring.accept_multi(&fd, t) {
            Ok(op) => self.listeners[idx].op = Some(op),
            Err(_) => {
                let gen = self.listeners[idx].gen;
                self.timers.push(Reverse((
                    self.now + Duration::from_millis(50),
                    TimerKey::Listener(idx, gen),
                )));
            }
        }
    }

    pub(super) fn stop_listen(&mut self, id: Option<u64>) {
        let idxs: Vec<usize> = self
            .listeners
            .iter()
            .filter(|(_, l)| id.is_none_or(|id| l.id == id))
            .map(|(i, _)| i)
            .collect();
        for idx in idxs {
            let l = self.listeners.remove(idx);
            if let Some(op) = l.op {
                let _ = self.ring.cancel(op);
            }
            // The accept op holds its own Rc of the fd: it closes when the op completes.
        }
    }

    pub(super) fn on_accept(&mut self, idx: usize, gen: u32, c: Completion) {
        let live = self
            .listeners
            .get(idx)
            .is_some_and(|l| l.gen & GEN_MASK == gen);
        if !live {
            // Stopped listener: an fd accepted before the cancel landed is closed here.
            drop(sys::adopt_fd(c.result));
            return;
        }
        if !c.more {
            self.listeners[idx].op = None;
        }
        if c.result >= 0 {
            if let Some(fd) = sys::adopt_fd(c.result) {
                ShardStats::add(&self.shared.stats.accepted, 1);
                self.admit(idx, fd);
            }
        }
        if !c.more {
            if matches!(
                -c.result,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
            ) {
                // Out of descriptors/memory: back off instead of spinning.
                let gen = self.listeners[idx].gen;
                self.timers.push(Reverse((
                    self.now + Duration::from_millis(50),
                    TimerKey::Listener(idx, gen),
                )));
            } else {
                self.arm_accept(idx);
            }
        }
    }

    pub(super) fn admit(&mut self, lidx: usize, fd: OwnedFd) {
        let sock = socket2::SockRef::from(&fd);
        let (Ok(peer), Ok(local)) = (sock.peer_addr(), sock.local_addr()) else {
            return; // already reset by the peer; fd closes here
        };
        let l = &self.listeners[lidx];
        let hooks = l.hooks.clone();
        let opts = l.opts;
        let tls = l.tls.clone();
        let accepted_at = self.now;
        let admitted = match (peer.as_socket(), local.as_socket()) {
            (Some(peer), Some(local)) => contained(|| hooks.admit(peer))
                .unwrap_or(Err(PANICKED))
                .map(|t| (t, peer, local)),
            // A Unix-domain peer: admitted by its credentials, before any receive is armed.
            _ if local.is_unix() => match crate::unix::peer_cred(&fd) {
                Ok(cred) => contained(|| hooks.admit_unix(cred))
                    .unwrap_or(Err(PANICKED))
                    .map(|t| {
                        (
                            t,
                            cred.addr(),
                            crate::unix::uid_addr(crate::unix::current_uid()),
                        )
                    }),
                Err(_) => return, // the peer is gone already; fd closes here
            },
            _ => return,
        };
        let (token, peer, local) = match admitted {
            Ok(t) => t,
            Err(r) => {
                if r == PANICKED {
                    ShardStats::add(&self.shared.stats.handler_panics, 1);
                }
                ShardStats::add(&self.shared.stats.rejected, 1);
                return; // fd dropped: closed before any buffer or read
            }
        };
        let peers = self.peers.clone();
        let target = self.balancer.pick(|i| {
            let p = &peers[i];
            // A dead shard reports 0 open connections: it must not look like the least loaded.
            (!p.is_dead()).then(|| {
                // `adopted` first (see `adopt`).
                let adopted = p.stats.adopted.load(Ordering::Acquire);
                (p.stats.open.load(Ordering::Relaxed), adopted)
            })
        });
        let adopt = Adopt {
            fd,
            peer,
            local,
            token,
            hooks,
            opts,
            tls,
            accepted_at,
        };
        if target == self.id {
            self.adopt(adopt);
            return;
        }
        if let Err(e) = peers[target].send_cmd(Command::Adopt(adopt)) {
            if let (Command::Adopt(a), _) = *e {
                self.balancer.undo(target);
                self.adopt(a);
            }
        }
    }

    pub(super) fn adopt(&mut self, a: Adopt) {
        self.adopt_inner(a);
        // Published after `open` counted the connection (in `install`), with Release; the
        // balancer reads `adopted` (Acquire) before `open`, so a hand-off is always seen in
        // transit or open, never in neither (found by the loom model `balancer_hand_off_books_balance`:
        // counted the other way round, a connection between the two counters made its shard
        // look emptier than it was).
        ShardStats::add_release(&self.shared.stats.adopted, 1);
    }

    fn adopt_inner(&mut self, a: Adopt) {
        if self.drain.is_some() {
            return; // shutting down: refuse (fd closes here)
        }
        if a.opts.nodelay {
            let _ = socket2::SockRef::from(&a.fd).set_nodelay(true);
        }
        let opener = Opener::Accept {
            hooks: a.hooks,
            token: a.token,
        };
        let tls = match a.tls {
            None => None,
            Some(cfg) => {
                let deadline = a.opts.timeouts.read.map(|d| a.accepted_at + d);
                match TlsPump::server(cfg) {
                    Ok(mut p) => {
                        if let Some(n) = self.cfg.tls_key_update_records {
                            p.set_key_update_interval(n);
                        }
                        Some(TlsConn::new(p, a.accepted_at, deadline))
                    }
                    Err(e) => {
                        self.fail_before_install(a.peer, a.local, false, opener, &e);
                        return;
                    }
                }
            }
        };
        self.install(a.fd, a.peer, a.local, false, a.opts, tls, opener);
    }

    /// A TLS pump could not even be created (a config the pump refuses): report it as a
    /// handshake failure without installing the connection (the socket closes here).
    pub(super) fn fail_before_install(
        &mut self,
        peer: SocketAddr,
        local: SocketAddr,
        outbound: bool,
        opener: Opener,
        e: &PumpError,
    ) {
        ShardStats::add(&self.shared.stats.tls_handshake_failed, 1);
        let meta = self.new_meta(peer, local, outbound);
        let told = opener.failed(
            &meta,
            HandshakeFailure {
                reason: CloseReason::Tls(e.kind()),
                detail: e.to_string(),
                elapsed: Duration::ZERO,
            },
        );
        if !told {
            ShardStats::add(&self.shared.stats.handler_panics, 1);
        }
    }

    /// Facts of a new connection of this shard (a fresh id; TLS facts come at handshake end).
    fn new_meta(&self, peer: SocketAddr, local: SocketAddr, outbound: bool) -> ConnMeta {
        ConnMeta {
            id: self.conn_ids.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            shard: self.id,
            outbound,
            tls: None,
            quic_stream: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn install(
        &mut self,
        fd: OwnedFd,
        peer: SocketAddr,
        local: SocketAddr,
        outbound: bool,
        opts: ConnOptions,
        tls: Option<TlsConn>,
        opener: Opener,
    ) {
        self.install_inner(
            Rc::new(fd),
            peer,
            local,
            outbound,
            opts,
            tls,
            opener,
            None,
            None,
        );
    }

    /// Installs one QUIC stream as a connection (its handshake is done: the handler opens at
    /// once, with the connection's `facts`). Returns its slot and generation if it is still
    /// open after `on_open`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn install_stream(
        &mut self,
        fd: Rc<OwnedFd>,
        peer: SocketAddr,
        local: SocketAddr,
        outbound: bool,
        opts: ConnOptions,
        opener: Opener,
        stream: quic::QuicStream,
        facts: Option<Box<TlsFacts>>,
    ) -> Option<(usize, u32)> {
        let (idx, gen) = self.install_inner(
            fd,
            peer,
            local,
            outbound,
            opts,
            None,
            opener,
            Some(stream),
            facts,
        );
        self.conns
            .get(idx)
            .is_some_and(|c| c.gen == gen)
            .then_some((idx, gen))
    }

    #[allow(clippy::too_many_arguments)]
    fn install_inner(
        &mut self,
        fd: Rc<OwnedFd>,
        peer: SocketAddr,
        local: SocketAddr,
        outbound: bool,
        opts: ConnOptions,
        tls: Option<TlsConn>,
        opener: Opener,
        quic: Option<quic::QuicStream>,
        facts: Option<Box<TlsFacts>>,
    ) -> (usize, u32) {
        let gen = self.gen();
        let mut meta = self.new_meta(peer, local, outbound);
        meta.tls = facts;
        meta.quic_stream = quic.map(|q| q.facts());
        let entry = self.conns.vacant_entry();
        let idx = entry.key();
        let remote = ConnRemote(Arc::new(RemoteShared {
            shard: self.shared.wakes.clone(),
            key: (idx as u32, gen),
            word: crate::wake::WakeWord::default(),
            gone: AtomicBool::new(false),
        }));
        let mut panicked = false;
        let (handler, opener) = match tls {
            None => match opener.open(&meta, remote.clone()) {
                Some(h) => (Some(h), None),
                None => {
                    panicked = true;
                    (Some(Box::new(Refuse) as Box<dyn ConnHandler>), None)
                }
            },
            Some(_) => (None, Some(opener)),
        };
        let open_now = handler.is_some() && !panicked;
        entry.insert(Conn {
            gen,
            fd,
            meta,
            state: ConnState::new(self.now, opts.max_frame, opts.timeouts),
            handler,
            tls: tls.map(Box::new),
            opener,
            quic,
            io: ConnIo {
                out: VecDeque::new(),
                want_read: true,
                output_pauses_reading: true,
                read_hold: None,
                read_hold_armed: None,
                deferred: bytes::BytesMut::new(),
                close: panicked.then_some((CloseReason::HandlerPanic, false)),
                remote,
                recv_op: None,
                recv_cancelled: false,
                recv_kind: RecvKind::Ring,
                direct: false,
                direct_len: 0,
                fresh_seq: 0,
                out_paused: false,
                starved: false,
                send_op: None,
                zc_sent: None,
                eof: false,
                timer: None,
                wake_at: None,
                wake_armed: None,
                ring_pins: None,
                pin_copies: 0,
            },
        });
        ShardStats::add(&self.shared.stats.open, 1);
        if panicked {
            ShardStats::add(&self.shared.stats.handler_panics, 1);
        }
        if open_now {
            self.call(idx, |h, ctx| h.on_open(ctx));
        }
        self.service(idx);
        (idx, gen)
    }
}

/// The refusal recorded when an admission hook panicked (the peer is refused, the panic
/// counted in `handler_panics`).
const PANICKED: Reject = Reject {
    reason: "handler_panic",
};
