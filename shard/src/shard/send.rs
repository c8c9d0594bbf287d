//! The send path: queued frames coalesced into one submission per `chunk_bytes` (TLS: sealed
//! into the per-connection send buffer), and send completions.
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

impl Shard {
    /// Submits the next ciphertext batch of a TLS connection (no send in flight). Returns false
    /// if the connection was finished.
    pub(super) fn tls_output(&mut self, idx: usize) -> bool {
        let chunk = self.cfg.chunk_bytes;
        let conn = &mut self.conns[idx];
        let gen = conn.gen;
        let Some(tls) = conn.tls.as_mut() else {
            return true;
        };
        let queued = conn.state.queued();
        let batch = match tls.next_batch(&mut conn.io.out, queued, chunk, chunk) {
            Ok(Some(b)) => b,
            Ok(None) => return true,
            Err(e) => {
                let kind = e.kind();
                tls.error = Some(e);
                self.finish(idx, CloseReason::Tls(kind));
                return false;
            }
        };
        let (seg, passes) = batch;
        ShardStats::add(&self.shared.stats.tls_encrypt_passes, passes);
        let (ku_sent, ku_recv) = tls.key_update_deltas();
        ShardStats::add(&self.shared.stats.tls_key_updates_sent, ku_sent);
        ShardStats::add(&self.shared.stats.tls_key_updates_received, ku_recv);
        let fd = conn.fd.clone();
        let batch = SendBatch::new(vec![seg]);
        match self.ring.send(&fd, batch, false, tag(Kind::Send, idx, gen)) {
            Ok(op) => {
                ShardStats::add(&self.shared.stats.send_submissions, 1);
                self.conns[idx].io.send_op = Some(op);
                true
            }
            Err(e) => {
                self.finish(idx, CloseReason::Io(e.raw_os_error().unwrap_or(libc::EIO)));
                false
            }
        }
    }

    pub(super) fn on_send(&mut self, idx: usize, gen: u32, c: Completion) {
        if !self.live(idx, gen) {
            return;
        }
        let conn = &mut self.conns[idx];
        if c.more {
            // Zero-copy: data accepted; buffers come back with the notification.
            conn.io.zc_sent = Some(c.result);
            return;
        }
        let result = if c.notif {
            conn.io.zc_sent.take().unwrap_or(c.result)
        } else {
            c.result
        };
        conn.io.send_op = None;
        let segs = match c.res {
            Some(Resource::Send(_, batch)) => batch.segs,
            _ => Vec::new(),
        };
        if result < 0 {
            if result != -libc::ECANCELED && conn.io.close.as_ref().is_none_or(|c| c.1) {
                conn.io.close = Some((CloseReason::Io(-result), false));
            }
            self.service(idx);
            return;
        }
        let n = result as usize;
        ShardStats::add(&self.shared.stats.bytes_out, n as u64);
        if let Some(tls) = conn.tls.as_mut() {
            // One ciphertext segment: credit the plaintext it carries, resubmit a partial rest.
            let (plain, frames) = tls.flight.written(n);
            // Any ciphertext written is progress for the write deadline.
            conn.state.handle_sent(self.now, plain);
            if plain > 0 {
                if let Some(h) = conn.handler.as_mut() {
                    if contained(|| h.on_sent(plain)).is_none() {
                        conn.io.close = Some((CloseReason::HandlerPanic, false));
                        ShardStats::add(&self.shared.stats.handler_panics, 1);
                    }
                }
            }
            ShardStats::add(&self.shared.stats.frames_out, frames);
            for mut s in segs {
                s.advance(n);
                if s.remaining() > 0 {
                    tls.unsent = Some(s);
                } else if let Some(b) = s.into_buf() {
                    let idle = conn.io.out.is_empty();
                    tls.put_back(b, idle);
                }
            }
        } else {
            conn.state.handle_sent(self.now, n);
            if n > 0 {
                if let Some(h) = conn.handler.as_mut() {
                    if contained(|| h.on_sent(n)).is_none() {
                        conn.io.close = Some((CloseReason::HandlerPanic, false));
                        ShardStats::add(&self.shared.stats.handler_panics, 1);
                    }
                }
            }
            let mut rem = n;
            let mut left = Vec::new();
            let mut frames = 0u64;
            for mut s in segs {
                if rem > 0 {
                    rem -= s.advance(rem);
                }
                if s.remaining() > 0 {
                    left.push(s);
                } else {
                    frames += 1;
                    if let Body::Bytes(b) = s.into_body() {
                        // An assembled frame echoed back: its buffer serves the next one.
                        frame::recycle(b);
                    }
                }
            }
            ShardStats::add(&self.shared.stats.frames_out, frames);
            for s in left.into_iter().rev() {
                conn.io.out.push_front(s);
            }
        }
        if conn.state.queued() < self.cfg.chunk_bytes / 2 && conn.io.close.is_none() {
            self.call(idx, |h, ctx| h.on_writable(ctx));
        }
        self.service(idx);
    }

    /// Submits queued output of a connection if no send is in flight (coalesced up to
    /// `chunk_bytes`; TLS: the next sealed batch). False if the connection was finished.
    pub(super) fn submit_output(&mut self, idx: usize) -> bool {
        let conn = &mut self.conns[idx];
        if conn.quic.is_some() {
            return self.quic_write(idx);
        }
        if conn.tls.is_some() {
            if conn.io.send_op.is_none() && !self.tls_output(idx) {
                return false;
            }
        } else if conn.io.send_op.is_none() && !conn.io.out.is_empty() {
            let mut segs = Vec::new();
            let mut bytes = 0usize;
            while let Some(seg) = conn.io.out.front() {
                if !segs.is_empty()
                    && (bytes + seg.remaining() > self.cfg.chunk_bytes || segs.len() >= 256)
                {
                    break;
                }
                bytes += seg.remaining();
                // Invariant: front() was Some just above.
                segs.push(conn.io.out.pop_front().expect("front exists"));
            }
            // Zero-copy sends are a TCP feature: never on a Unix-domain socket (its peer
            // carries a uid address).
            let zc = self.cfg.zc_threshold.is_some_and(|t| bytes >= t)
                && crate::unix::addr_uid(&conn.meta.peer).is_none();
            let batch = SendBatch::new(segs);
            let fd = conn.fd.clone();
            match self
                .ring
                .send(&fd, batch, zc, tag(Kind::Send, idx, conn.gen))
            {
                Ok(op) => {
                    let st = &self.shared.stats;
                    ShardStats::add(&st.send_submissions, 1);
                    if zc {
                        ShardStats::add(&st.sends_zc, 1);
                    }
                    self.conns[idx].io.send_op = Some(op);
                }
                Err(e) => {
                    self.finish(idx, CloseReason::Io(e.raw_os_error().unwrap_or(libc::EIO)));
                    return false;
                }
            }
        }
        true
    }
}
