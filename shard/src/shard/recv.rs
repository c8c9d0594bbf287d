//! The receive path: arming receives (multishot into the provided-buffer ring, or direct into
//! a frame's own buffer), their completions, TLS decryption and frame delivery to handlers,
//! bytes held back by ingress pacing, and the end of a TLS handshake.
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

impl Shard {
    /// Delivers bytes held back by rate pacing, one receive buffer's worth at a time, for as
    /// long as no new hold is requested (each delivery charges the buckets again).
    pub(super) fn release_deferred(&mut self, idx: usize) {
        let max = self.cfg.buf_size as usize;
        loop {
            let Some(conn) = self.conns.get_mut(idx) else {
                return;
            };
            if conn.io.deferred.is_empty()
                || conn.io.close.is_some()
                || conn.io.read_hold.is_some_and(|t| t > self.now)
                || !conn.io.want_read
            {
                if conn.io.deferred.is_empty() && conn.io.deferred.capacity() > 64 * 1024 {
                    conn.io.deferred = bytes::BytesMut::new();
                }
                return;
            }
            let n = conn.io.deferred.len().min(max);
            let b = conn.io.deferred.split_to(n).freeze();
            self.deliver(idx, Chunk::Owned(b));
        }
    }

    /// The TLS handshake of `idx` completed: record the facts, build the handler, open it.
    pub(super) fn handshake_done(&mut self, idx: usize) {
        let now = self.now;
        let conn = &mut self.conns[idx];
        let Some(tls) = conn.tls.as_mut() else { return };
        let Some(opener) = conn.opener.take() else {
            return;
        };
        tls.hs_deadline = None;
        let p = &tls.pump;
        conn.meta.tls = Some(Box::new(TlsFacts {
            handshake: now.saturating_duration_since(tls.started),
            hybrid_pq: p.is_hybrid_pq(),
            group: p.negotiated_group(),
            alpn: p.alpn_protocol().map(<[u8]>::to_vec),
            resumed: p.is_resumed(),
        }));
        // The handshake counts as activity: the idle clock starts now.
        conn.state.set_paused(now, true);
        conn.state.set_paused(now, false);
        ShardStats::add(&self.shared.stats.tls_handshakes, 1);
        match opener.open(&conn.meta, conn.io.remote.clone()) {
            Some(h) => {
                conn.handler = Some(h);
                self.call(idx, |h, ctx| h.on_open(ctx));
            }
            None => {
                conn.handler = Some(Box::new(Refuse));
                conn.io.close = Some((CloseReason::HandlerPanic, false));
                ShardStats::add(&self.shared.stats.handler_panics, 1);
            }
        }
    }

    pub(super) fn on_recv(&mut self, idx: usize, gen: u32, c: Completion) {
        if !self.live(idx, gen) {
            return;
        }
        let conn = &mut self.conns[idx];
        if !c.more {
            conn.io.recv_op = None;
            conn.io.recv_cancelled = false;
        }
        if let Some(Resource::RecvInto(_, buf)) = c.res {
            self.on_direct_recv(idx, c.result, buf);
            return;
        }
        if c.result > 0 {
            if let Some(buf) = c.buf {
                if conn.io.close.is_none() {
                    let held = conn.io.read_hold.is_some_and(|t| t > self.now);
                    if held || !conn.io.deferred.is_empty() {
                        // Reads are held (rate pacing) but the multishot receive had already
                        // taken these bytes: keep them (a copy; the buffer goes back to the
                        // ring at once) and deliver them as the hold allows.
                        ShardStats::add(&self.shared.stats.bytes_in, buf.len() as u64);
                        ShardStats::add(&self.shared.stats.recv_completions, 1);
                        conn.io.deferred.extend_from_slice(buf.as_slice());
                    } else {
                        self.deliver(idx, Chunk::Ring(buf));
                        self.maybe_go_direct(idx);
                    }
                }
            }
        } else if c.result == 0 {
            // Bytes held back by pacing go first (unpaced: the peer is done sending).
            while !self.conns[idx].io.deferred.is_empty() && self.conns[idx].io.close.is_none() {
                let b = self.conns[idx].io.deferred.split().freeze();
                self.deliver(idx, Chunk::Owned(b));
            }
            self.conns[idx].mark_eof();
        } else {
            match -c.result {
                libc::ENOBUFS => {
                    ShardStats::add(&self.shared.stats.recv_no_buffers, 1);
                    conn.io.starved = true;
                    self.starved.push((idx, conn.gen));
                }
                libc::ECANCELED => {}
                e => {
                    if conn.io.close.is_none() {
                        conn.io.close = Some((CloseReason::Io(e), false));
                    }
                }
            }
        }
        self.service(idx);
    }

    /// After a ring receive: a plain-TCP frame with many bytes still missing switches the
    /// connection to direct receives. The multishot receive is cancelled; what it already
    /// took is still delivered (appended to the frame) before the first direct receive.
    pub(super) fn maybe_go_direct(&mut self, idx: usize) {
        let Some(min) = self.cfg.direct_recv_min else {
            return;
        };
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.tls.is_some() || conn.io.direct || conn.io.close.is_some() {
            return;
        }
        if conn.state.missing() >= min {
            conn.io.direct = true;
            conn.io.direct_len = conn.state.body_len();
            ShardStats::add(&self.shared.stats.recv_direct_switches, 1);
            if let (Some(op), false) = (conn.io.recv_op, conn.io.recv_cancelled) {
                conn.io.recv_cancelled = true;
                let _ = self.ring.cancel(op);
            }
        }
    }

    /// Completion of a direct receive (into a lent body buffer or a fresh one).
    pub(super) fn on_direct_recv(&mut self, idx: usize, result: i32, buf: bytes::BytesMut) {
        let now = self.now;
        let min = self.cfg.direct_recv_min.unwrap_or(usize::MAX);
        let conn = &mut self.conns[idx];
        let kind = conn.io.recv_kind;
        let mut decoded = std::mem::take(&mut self.decoded);
        let n = usize::try_from(result).unwrap_or(0);
        let mut res = Ok(());
        match kind {
            RecvKind::Body => conn.state.put_body(now, buf, n, |d| decoded.push(d)),
            _ if n == 0 => {
                frame::recycle(buf.freeze());
            }
            _ => {
                res = conn.state.handle_recv_owned(now, buf, |d| decoded.push(d));
                // Stay direct while frames stay large: every frame in this buffer large, and
                // nothing small left in progress. Small frames go back to the ring.
                let all_large = decoded
                    .iter()
                    .all(|d| matches!(d, Decoded::Assembled(b) if b.len() >= min));
                let tail = conn.state.missing();
                if all_large && (tail >= min || !conn.state.mid_frame()) {
                    if tail > 0 {
                        conn.io.direct_len = conn.state.body_len();
                    } else if let Some(Decoded::Assembled(b)) = decoded.last() {
                        conn.io.direct_len = b.len();
                    }
                } else {
                    conn.io.direct = false;
                }
            }
        }
        self.decoded = decoded;
        if n > 0 {
            let st = &self.shared.stats;
            ShardStats::add(&st.bytes_in, n as u64);
            ShardStats::add(&st.recv_completions, 1);
            ShardStats::add(&st.recv_direct, 1);
            self.deliver(idx, Chunk::Direct { received: n, res });
        } else if result == 0 {
            self.conns[idx].mark_eof();
        } else if result != -libc::ECANCELED {
            let conn = &mut self.conns[idx];
            if conn.io.close.is_none() {
                conn.io.close = Some((CloseReason::Io(-result), false));
            }
        }
        self.service(idx);
    }

    pub(super) fn deliver(&mut self, idx: usize, mut chunk: Chunk) {
        let now = self.now;
        let st = &self.shared.stats;
        if let Chunk::Ring(buf) = &chunk {
            ShardStats::add(&st.bytes_in, buf.len() as u64);
            ShardStats::add(&st.recv_completions, 1);
        }
        let mut decoded = std::mem::take(&mut self.decoded);
        let conn = &mut self.conns[idx];
        let mut res = Ok(());
        let mut handshake_completed = false;
        let mut late_close = None;
        let received;
        if let Some(tls) = conn.tls.as_mut() {
            let unique = matches!(&mut chunk, Chunk::Ring(buf) if buf.is_unique());
            let input = match &mut chunk {
                Chunk::Ring(buf) if unique => {
                    // `is_unique` held just above, so the writable view is available.
                    crate::tls_conn::RecvBuf::Mut(buf.as_mut_slice().unwrap_or_default())
                }
                Chunk::Ring(buf) => crate::tls_conn::RecvBuf::Shared(buf.as_slice()),
                Chunk::Owned(b) => crate::tls_conn::RecvBuf::Shared(b),
                Chunk::Direct { .. } => crate::tls_conn::RecvBuf::Shared(&[]),
            };
            let handshaking = tls.pump.is_handshaking();
            let oc = tls.on_recv(&mut conn.state, now, input, &mut decoded);
            self.flush_now |= handshaking;
            received = oc.plaintext;
            ShardStats::add(&st.tls_records_in_place, oc.records_in_place);
            if oc.handshake_completed && tls.pump.seals_in_place() {
                ShardStats::add(&st.tls_record_layer, 1);
            }
            let (ku_sent, ku_recv) = tls.key_update_deltas();
            ShardStats::add(&st.tls_key_updates_sent, ku_sent);
            ShardStats::add(&st.tls_key_updates_received, ku_recv);
            if oc.assembled {
                ShardStats::add(&st.tls_assembled, 1);
            }
            handshake_completed = oc.handshake_completed;
            if let Some(e) = oc.frame_error {
                res = Err(e);
            }
            // Applied after the frames decoded before it are delivered.
            if let Some(e) = oc.tls_error {
                let kind = e.kind();
                tls.error = Some(e);
                // Graceful: the alert rustls queued for the peer is flushed first.
                late_close = Some((CloseReason::Tls(kind), true));
            } else if oc.peer_closed {
                late_close = Some(if conn.state.mid_frame() {
                    (CloseReason::PeerClosedMidFrame, false)
                } else {
                    (CloseReason::PeerClosed, true)
                });
            }
        } else if let Chunk::Direct {
            received: n,
            res: r,
        } = &mut chunk
        {
            received = *n;
            res = std::mem::replace(r, Ok(()));
        } else {
            received = chunk.as_slice().len();
            res = conn
                .state
                .handle_recv(now, chunk.as_slice(), |d| decoded.push(d));
        }
        if handshake_completed && conn.opener.is_some() {
            if self.drain.is_some() && conn.io.close.is_none() {
                // The runtime is shutting down: a handshake that completes now opens no
                // handler (it would only be aborted at the deadline); the hooks hear
                // `handshake_failed(Shutdown)` as for one that was still running.
                conn.io.close = Some((CloseReason::Shutdown, false));
                if let Some(t) = conn.tls.as_mut() {
                    t.hs_deadline = None;
                }
            } else if conn.io.close.is_none() && late_close.is_none() {
                self.handshake_done(idx);
            } else if let Some(t) = conn.tls.as_mut() {
                t.hs_deadline = None;
            }
        }
        let st = &self.shared.stats;
        let conn = &mut self.conns[idx];
        if let Some(mut h) = conn.handler.take() {
            let mut panicked = received > 0 && contained(|| h.on_received(received)).is_none();
            let data = chunk.as_slice();
            let (mut n, mut in_place) = (0u64, 0u64);
            for d in decoded.drain(..) {
                if conn.io.close.is_some() || panicked {
                    break;
                }
                let mut ctx = ConnCtx {
                    io: &mut conn.io,
                    state: &mut conn.state,
                    meta: &conn.meta,
                    now,
                };
                n += 1;
                match d {
                    Decoded::InPlace { start, len } => match &chunk {
                        Chunk::Ring(buf) => {
                            in_place += 1;
                            let frame = Frame {
                                payload: &data[start..start + len],
                                src: FrameSrc::Ring(buf, start),
                            };
                            panicked = contained(|| h.on_frame(&mut ctx, frame)).is_none();
                        }
                        Chunk::Owned(b) => {
                            let fb = b.slice(start..start + len);
                            let frame = Frame {
                                payload: &fb,
                                src: FrameSrc::Owned(&fb),
                            };
                            panicked = contained(|| h.on_frame(&mut ctx, frame)).is_none();
                        }
                        // Direct receives decode owned frames only.
                        Chunk::Direct { .. } => {}
                    },
                    Decoded::Assembled(b) => {
                        let frame = Frame {
                            payload: &b,
                            src: FrameSrc::Owned(&b),
                        };
                        panicked = contained(|| h.on_frame(&mut ctx, frame)).is_none();
                        // Unless the handler kept (or queued) it, the buffer goes back.
                        frame::recycle(b);
                    }
                }
            }
            conn.handler = Some(h);
            if panicked {
                conn.io.close = Some((CloseReason::HandlerPanic, false));
                ShardStats::add(&st.handler_panics, 1);
            }
            ShardStats::add(&st.frames_in, n);
            ShardStats::add(&st.frames_in_place, in_place);
        }
        decoded.clear();
        self.decoded = decoded;
        if let Err(e) = res {
            let conn = &mut self.conns[idx];
            if conn.io.close.is_none() || matches!(conn.io.close, Some((_, true))) {
                conn.io.close = Some((CloseReason::Frame(e), false));
            }
        }
        if let Some(c) = late_close {
            let conn = &mut self.conns[idx];
            if conn.io.close.is_none() || (matches!(conn.io.close, Some((_, true))) && !c.1) {
                conn.io.close = Some(c);
            }
        }
    }

    /// Arms, keeps or cancels a connection's receive (it is not closing). False if the
    /// connection was finished.
    pub(super) fn arm_recv(&mut self, idx: usize) -> bool {
        let now = self.now;
        let conn = &mut self.conns[idx];
        let key_tag_gen = conn.gen;
        // Reading. Output above the high-water mark pauses reading too, so a peer that
        // does not read cannot make its connection hold receive buffers without bound.
        // With hysteresis: once paused, reading resumes only below half the mark, so a
        // peer hovering at the mark does not cancel and re-arm the receive per frame.
        let held = match conn.io.read_hold {
            Some(t) if t > now => {
                if conn.io.read_hold_armed != Some(t) {
                    conn.io.read_hold_armed = Some(t);
                    self.timers
                        .push(Reverse((t, TimerKey::Resume(idx, conn.gen))));
                }
                true
            }
            _ => {
                conn.io.read_hold = None;
                false
            }
        };
        let mark = if conn.io.out_paused {
            self.cfg.out_high_water / 2
        } else {
            self.cfg.out_high_water
        };
        let over = conn.io.output_pauses_reading && conn.state.queued() >= mark;
        if over && !conn.io.out_paused {
            ShardStats::add(&self.shared.stats.recv_paused, 1);
        }
        conn.io.out_paused = over;
        let want = conn.io.want_read && !held && !over;
        conn.state.set_paused(now, !want);
        if conn.quic.is_some() {
            // QUIC: bytes wait in quinn (its flow control holds the peer back) until read.
            if want {
                self.quic_read(idx);
                if self.conns.get(idx).is_some_and(|c| c.io.close.is_some()) {
                    // The read ended the stream (FIN, reset, a frame error): close it now.
                    self.service(idx);
                    return false;
                }
            }
            return self.conns.contains(idx);
        }
        if want && conn.io.recv_op.is_none() && !conn.io.eof && !conn.io.starved {
            let fd = conn.fd.clone();
            let t = tag(Kind::Recv, idx, key_tag_gen);
            let direct = conn.io.direct && conn.tls.is_none() && conn.io.deferred.is_empty();
            let armed = if !direct {
                conn.io.direct = false;
                conn.io.recv_kind = RecvKind::Ring;
                self.ring.recv_multi(&fd, t)
            } else if let Some((buf, missing)) = conn.state.take_body() {
                conn.io.recv_kind = RecvKind::Body;
                self.ring.recv_into(&fd, buf, missing, t)
            } else {
                // At a frame boundary (a partial header never stays in direct mode): room
                // for a few frames like the last, headers included, so one receive can
                // take several (fewer receive calls, and fewer window updates sent).
                let one = frame::HEADER_LEN + conn.io.direct_len;
                let want = one * (DIRECT_BATCH_BYTES / one).max(1);
                conn.io.recv_kind = RecvKind::Fresh;
                // A peer that stops sending must not pin this buffer: if nothing arrives
                // within DIRECT_IDLE the receive is cancelled and the connection goes
                // back to the ring (which holds no memory while idle).
                conn.io.fresh_seq = conn.io.fresh_seq.wrapping_add(1);
                self.timers.push(Reverse((
                    now + DIRECT_IDLE,
                    TimerKey::DirectIdle(idx, key_tag_gen, conn.io.fresh_seq),
                )));
                self.ring.recv_into(&fd, frame::take_buf(want), want, t)
            };
            match armed {
                Ok(op) => self.conns[idx].io.recv_op = Some(op),
                Err(e) => {
                    self.conns[idx].io.close = Some((
                        CloseReason::Io(e.raw_os_error().unwrap_or(libc::EIO)),
                        false,
                    ));
                    self.finish(idx, CloseReason::Io(e.raw_os_error().unwrap_or(libc::EIO)));
                    return false;
                }
            }
        } else if !want {
            if let (Some(op), false) = (conn.io.recv_op, conn.io.recv_cancelled) {
                conn.io.recv_cancelled = true;
                let _ = self.ring.cancel(op);
            }
        }
        true
    }
}
