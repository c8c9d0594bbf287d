//! Outbound connections: connect under a deadline, then install (and, for TLS, handshake).
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

impl Shard {
    pub(super) fn dial(
        &mut self,
        addr: SocketAddr,
        unix: Option<std::path::PathBuf>,
        deadline: Instant,
        opts: ConnOptions,
        hooks: Box<dyn DialHooks>,
        tls: Option<TlsDial>,
    ) {
        if self.drain.is_some() {
            ShardStats::add(&self.shared.stats.dial_failed, 1);
            self.dial_failed(hooks, DialError::Unavailable("shutdown"));
            return;
        }
        let to = match &unix {
            None => Ok(socket2::SockAddr::from(addr)),
            Some(path) => socket2::SockAddr::unix(path),
        };
        let (domain, proto) = match &unix {
            None => (
                socket2::Domain::for_address(addr),
                Some(socket2::Protocol::TCP),
            ),
            Some(_) => (socket2::Domain::UNIX, None),
        };
        let sock = match to.and_then(|to| {
            socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), proto).map(|s| (s, to))
        }) {
            Ok(s) => s,
            Err(e) => {
                ShardStats::add(&self.shared.stats.dial_failed, 1);
                self.dial_failed(hooks, DialError::Io(e));
                return;
            }
        };
        let (sock, to) = sock;
        if opts.nodelay && unix.is_none() {
            let _ = sock.set_nodelay(true);
        }
        let fd = Rc::new(OwnedFd::from(sock));
        let gen = self.gen();
        let entry = self.dials.vacant_entry();
        let idx = entry.key();
        match self.ring.connect(&fd, to, tag(Kind::Connect, idx, gen)) {
            Ok(op) => {
                entry.insert(PendingDial {
                    gen,
                    fd,
                    op,
                    hooks: Some(hooks),
                    opts,
                    peer: addr,
                    unix: unix.is_some(),
                    timed_out: false,
                    deadline,
                    started: self.now,
                    tls,
                });
                self.timers
                    .push(Reverse((deadline, TimerKey::Dial(idx, gen))));
            }
            Err(e) => {
                ShardStats::add(&self.shared.stats.dial_failed, 1);
                self.dial_failed(hooks, DialError::Io(e));
            }
        }
    }

    pub(super) fn on_connect(&mut self, idx: usize, gen: u32, c: Completion) {
        if self.dials.get(idx).is_none_or(|d| d.gen != gen) {
            return;
        }
        let mut d = self.dials.remove(idx);
        let result = c.result;
        // Release the op's resources (its Rc of the socket) before taking the socket back.
        drop(c);
        let Some(hooks) = d.hooks.take() else { return };
        let st = &self.shared.stats;
        if result < 0 {
            ShardStats::add(&st.dial_failed, 1);
            if d.timed_out {
                ShardStats::add(&st.timeout_dial, 1);
                self.dial_failed(hooks, DialError::Timeout);
            } else if self.drain.is_some() && result == -libc::ECANCELED {
                self.dial_failed(hooks, DialError::Unavailable("shutdown"));
            } else {
                self.dial_failed(
                    hooks,
                    DialError::Io(std::io::Error::from_raw_os_error(-result)),
                );
            }
            return;
        }
        let (local, peer) = if d.unix {
            // A Unix-domain dial: the listener's credentials name the peer.
            let peer = crate::unix::peer_cred(&*d.fd).map_or(d.peer, |c| c.addr());
            let own = crate::unix::uid_addr(crate::unix::current_uid());
            (Some(own), peer)
        } else {
            let local = socket2::SockRef::from(&*d.fd)
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket());
            (local, d.peer)
        };
        let Some(local) = local else {
            ShardStats::add(&st.dial_failed, 1);
            self.dial_failed(
                hooks,
                DialError::Io(std::io::Error::other("no local address")),
            );
            return;
        };
        ShardStats::add(&st.dialed, 1);
        // The connect op has completed, so ours is the last Rc (the op's resource was dropped).
        let fd = match Rc::try_unwrap(d.fd) {
            Ok(fd) => fd,
            Err(_) => {
                self.dial_failed(
                    hooks,
                    DialError::Io(std::io::Error::other("socket still shared")),
                );
                return;
            }
        };
        let opener = Opener::Dial(hooks);
        let tls = match d.tls.take() {
            None => None,
            Some(t) => match TlsPump::client(t.config, t.server_name) {
                // The dial deadline bounds connect and handshake together.
                Ok(mut p) => {
                    if let Some(n) = self.cfg.tls_key_update_records {
                        p.set_key_update_interval(n);
                    }
                    Some(TlsConn::new(p, d.started, Some(d.deadline)))
                }
                Err(e) => {
                    drop(fd);
                    self.fail_before_install(peer, local, true, opener, &e);
                    return;
                }
            },
        };
        self.install(fd, peer, local, true, d.opts, tls, opener);
    }
}
