//! Entry points for the fuzz crate (`fuzz/`, feature `fuzzing`, hidden from the docs): thin
//! wrappers that let a fuzz target drive private modules the way the shard loop does.
//!
//! Owns only the glue: [`TlsConnDriver`] is a connection's TLS state (`tls_conn`) plus
//! its framing state ([`ConnState`]), fed received ciphertext and asked for ciphertext to send,
//! exactly as `shard/recv.rs` and `shard/send.rs` do it, without a ring or a socket. It adds no
//! behaviour and no checks of its own; the fuzz targets assert. Not a stable API.
//!
//! For the datagram side (`fuzz_udp_datagram`): [`recvmsg_layout`], the lengths the QUIC
//! driver arms its multishot `recvmsg` with, and [`issue_cid`], a connection id as a shard's
//! endpoint issues it (the parsers themselves are public in [`crate::udp`]).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use crate::conn::{ConnState, Timeouts};
use crate::frame::{Decoded, FrameError};
use crate::sys::{Body, OutSeg};
use crate::tls_conn::{RecvBuf, TlsConn};
use crate::tls_pump::{PumpError, TlsPump};

/// One connection's TLS and framing state, driven like the shard drives it.
pub struct TlsConnDriver {
    conn: TlsConn,
    state: ConnState,
    now: Instant,
}

/// What one [`TlsConnDriver::recv`] produced (the fields of the shard's receive outcome, with
/// the frames resolved to bytes).
#[derive(Debug, Default)]
pub struct RecvResult {
    /// Complete frames, in order (in-place frames copied out of the receive buffer after it
    /// was decrypted in place).
    pub frames: Vec<Bytes>,
    /// How many of `frames` were reported in place (as ranges of the receive buffer).
    pub in_place_frames: usize,
    /// The handshake finished during this receive.
    pub handshake_completed: bool,
    /// The peer sent close_notify.
    pub peer_closed: bool,
    /// Plaintext bytes decrypted.
    pub plaintext: usize,
    /// Records decrypted in place.
    pub records_in_place: u64,
    /// A framing error (the shard closes the connection).
    pub frame_error: Option<FrameError>,
    /// A TLS error (the shard closes the connection after flushing the alert).
    pub tls_error: Option<PumpError>,
}

impl std::fmt::Debug for TlsConnDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnDriver")
            .field("pump", &self.conn.pump)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl TlsConnDriver {
    /// A connection with `pump`, frames limited to `max_frame` bytes, no deadlines.
    pub fn new(pump: TlsPump, max_frame: u32) -> Self {
        let now = Instant::now();
        let timeouts = Timeouts {
            read: None,
            write: None,
            idle: None,
        };
        Self {
            conn: TlsConn::new(pump, now, None),
            state: ConnState::new(now, max_frame, timeouts),
            now,
        }
    }

    /// The pump.
    pub fn pump(&self) -> &TlsPump {
        &self.conn.pump
    }

    /// True while a frame is partially received.
    pub fn mid_frame(&self) -> bool {
        self.state.mid_frame()
    }

    /// Feeds one receive completion's bytes. `writable` picks the shard's in-place path (the
    /// connection holds the provided buffer alone: records are decrypted in place in a copy of
    /// `bytes` and frames are reported as ranges of it); otherwise the shared (copying) path.
    pub fn recv(&mut self, bytes: &[u8], writable: bool) -> RecvResult {
        let mut decoded = Vec::new();
        let mut ring = bytes.to_vec();
        let oc = if writable {
            self.conn.on_recv(
                &mut self.state,
                self.now,
                RecvBuf::Mut(&mut ring),
                &mut decoded,
            )
        } else {
            self.conn.on_recv(
                &mut self.state,
                self.now,
                RecvBuf::Shared(bytes),
                &mut decoded,
            )
        };
        let mut r = RecvResult {
            handshake_completed: oc.handshake_completed,
            peer_closed: oc.peer_closed,
            plaintext: oc.plaintext,
            records_in_place: oc.records_in_place,
            frame_error: oc.frame_error,
            tls_error: oc.tls_error.clone(),
            ..RecvResult::default()
        };
        for d in decoded {
            match d {
                Decoded::InPlace { start, len } => {
                    r.in_place_frames += 1;
                    // Offsets into the receive buffer as the shard would index it.
                    let src: &[u8] = if writable { &ring } else { bytes };
                    r.frames
                        .push(Bytes::copy_from_slice(&src[start..start + len]));
                }
                Decoded::Assembled(b) => r.frames.push(b),
            }
        }
        if let Some(e) = oc.tls_error {
            // As the shard does: the error is kept; later sends flush the alert only.
            self.conn.error = Some(e);
        }
        r
    }

    /// Queues `frames` (length-prefixed) and builds ciphertext batches until nothing is left
    /// to send: pending handshake/alert bytes first, then the frames sealed in passes of
    /// `chunk` plaintext bytes, at most `budget` per batch. Returns all ciphertext, in order.
    pub fn send(
        &mut self,
        frames: &[Bytes],
        chunk: usize,
        budget: usize,
    ) -> Result<Vec<u8>, PumpError> {
        let mut out: VecDeque<OutSeg> = frames
            .iter()
            .map(|f| OutSeg::frame(Body::Bytes(f.clone())))
            .collect();
        let mut wire = Vec::new();
        let budget = budget.max(1);
        // Bounded: every batch carries at least one byte, and the queue is finite.
        for _ in 0..1 << 20 {
            let queued: usize = out.iter().map(OutSeg::remaining).sum();
            let Some((seg, _passes)) = self.conn.next_batch(&mut out, queued, chunk, budget)?
            else {
                return Ok(wire);
            };
            let (hdr, body) = seg.parts();
            wire.extend_from_slice(hdr);
            wire.extend_from_slice(body);
            let n = seg.remaining();
            let _ = self.conn.flight.written(n);
            if let Some(buf) = seg.into_buf() {
                self.conn.put_back(buf, out.is_empty());
            }
        }
        Err(PumpError::Internal("fuzzing_send_unbounded"))
    }

    /// Queues close_notify (as a graceful close does).
    pub fn close(&mut self) -> Result<(), PumpError> {
        self.conn.close_notify = true;
        self.conn.pump.queue_close_notify()
    }
}

/// The `(name, control)` byte lengths every QUIC receive buffer is laid out with: what the
/// shard passes to `recv_msg_multi` and then to [`crate::udp::parse_recvmsg`].
pub fn recvmsg_layout() -> (usize, usize) {
    (crate::udp::NAME_LEN as usize, crate::udp::CONTROL_LEN)
}

/// A connection id as shard `shard`'s quinn-proto endpoint issues it
/// ([`crate::udp::ShardCids`]).
pub fn issue_cid(shard: usize) -> Vec<u8> {
    use quinn_proto::ConnectionIdGenerator;
    crate::udp::ShardCids::new(shard).generate_cid().to_vec()
}
