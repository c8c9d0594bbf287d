//! The per-connection TLS state a shard keeps next to a connection's [`ConnState`]: the
//! [`TlsPump`], the assembly buffer for records that span receive buffers, the reusable
//! ciphertext send buffer, and the handshake deadline. Pure bookkeeping over byte slices (no
//! socket, no ring): the shard loop feeds it and submits what it produces.
//!
//! Copies per byte (after the handshake, on the own record layer, [`crate::tls_record`]):
//! - receive: a record that arrived whole in one provided buffer is opened in place there and
//!   its frames are handed out in place (0 copies by the shard). A record that spans buffers is
//!   assembled once in the connection's buffer (1 copy), and the frames inside it are copied out
//!   once more; a frame longer than a record is assembled in its frame buffer (1 copy).
//! - send: each queued frame's bytes are written once, straight into the plaintext slot of a
//!   record in the send buffer (`header | plaintext | type | tag`), and the record is sealed
//!   there in place; the kernel reads that buffer. Records are filled to 16 KiB with whatever
//!   is queued.
//!
//! While rustls still protects the records (during the handshake, or for a config without
//! `enable_secret_extraction`), sends stage small frames and seal through rustls's unbuffered
//! `encrypt` (two internal copies), as documented in [`crate::tls_pump`].
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;

use crate::conn::ConnState;
use crate::frame::{Decoded, FrameError};
use crate::sys::OutSeg;
use crate::tls_pump::{PumpError, Status, TlsPump};
use crate::tls_record::SEAL_OVERHEAD;

/// TLS record header length.
const RECORD_HEADER: usize = 5;
/// Largest TLS plaintext record.
const MAX_RECORD: usize = 16 * 1024;
/// Header, inner content type and AEAD tag of one TLS 1.3 record (with slack).
const RECORD_OVERHEAD: usize = 32;
/// A send buffer above this capacity is released once the connection has nothing to send.
const KEEP_TX_CAPACITY: usize = 20 * 1024;
/// Bound on pump steps without progress in one call (turns a livelock into an error).
const MAX_IDLE_STEPS: usize = 64;

/// TLS state of one connection.
pub(crate) struct TlsConn {
    pub(crate) pump: TlsPump,
    /// Ciphertext not yet discarded by the pump, when it could not stay in the ring buffer.
    rx: Vec<u8>,
    /// The reusable ciphertext send buffer (absent while a send owns it).
    tx: Option<Vec<u8>>,
    /// Plaintext staging for coalescing small frames into one encrypt pass.
    stage: Vec<u8>,
    /// A ciphertext segment that was only partly written.
    pub(crate) unsent: Option<OutSeg>,
    /// Accounting of the ciphertext batch in flight: plaintext bytes and frames it carries,
    /// ciphertext total and written so far, plaintext already credited as sent.
    pub(crate) flight: Flight,
    pub(crate) started: Instant,
    pub(crate) hs_deadline: Option<Instant>,
    pub(crate) close_notify: bool,
    pub(crate) error: Option<PumpError>,
    /// KeyUpdate counts (sent, received) already reported to the shard's stats.
    key_updates_seen: (u64, u64),
}

#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct Flight {
    plain: usize,
    frames: u64,
    cipher: usize,
    cipher_done: usize,
    credited: usize,
}

impl Flight {
    /// `n` ciphertext bytes were written; returns (plaintext bytes to credit, frames finished).
    pub(crate) fn written(&mut self, n: usize) -> (usize, u64) {
        self.cipher_done = (self.cipher_done + n).min(self.cipher);
        if self.cipher == 0 {
            return (0, 0);
        }
        let target = if self.cipher_done == self.cipher {
            self.plain
        } else {
            // u128: plain * cipher_done may exceed u64 on 32-bit-free paranoia; cheap anyway.
            (self.plain as u128 * self.cipher_done as u128 / self.cipher as u128) as usize
        };
        let credit = target.saturating_sub(self.credited);
        self.credited = target;
        let frames = if self.cipher_done == self.cipher {
            std::mem::take(&mut self.frames)
        } else {
            0
        };
        (credit, frames)
    }
}

/// One receive completion's bytes: writable (this connection holds the buffer alone, records
/// are decrypted in place and frames reported as ranges of it) or shared (copied out).
pub(crate) enum RecvBuf<'a> {
    Mut(&'a mut [u8]),
    Shared(&'a [u8]),
}

/// What one pass over received ciphertext produced.
#[derive(Default, Debug)]
pub(crate) struct RecvOutcome {
    pub(crate) handshake_completed: bool,
    pub(crate) peer_closed: bool,
    pub(crate) records_in_place: u64,
    pub(crate) plaintext: usize,
    pub(crate) assembled: bool,
    pub(crate) frame_error: Option<FrameError>,
    pub(crate) tls_error: Option<PumpError>,
}

impl TlsConn {
    pub(crate) fn new(pump: TlsPump, started: Instant, hs_deadline: Option<Instant>) -> Self {
        Self {
            pump,
            rx: Vec::new(),
            tx: None,
            stage: Vec::new(),
            unsent: None,
            flight: Flight::default(),
            started,
            hs_deadline,
            close_notify: false,
            error: None,
            key_updates_seen: (0, 0),
        }
    }

    /// KeyUpdates (sent, received) since the last call, for the shard's counters.
    pub(crate) fn key_update_deltas(&mut self) -> (u64, u64) {
        let s = self.pump.stats();
        let (sent, recv) = self.key_updates_seen;
        self.key_updates_seen = (s.key_updates_sent, s.key_updates_received);
        (s.key_updates_sent - sent, s.key_updates_received - recv)
    }

    /// True while ciphertext is waiting to be written (pump queue or a partial segment).
    pub(crate) fn has_output(&self) -> bool {
        self.unsent.is_some() || self.pump.wants_write()
    }

    /// Processes one receive completion's bytes. `ring` is the receive buffer, writable when
    /// this connection holds it alone (then records are decrypted in place and frames are
    /// reported as `Decoded::InPlace` ranges of it); `chunk` is the same bytes read-only.
    /// Frames go to `out` in order.
    pub(crate) fn on_recv(
        &mut self,
        state: &mut ConnState,
        now: Instant,
        input: RecvBuf<'_>,
        out: &mut Vec<Decoded>,
    ) -> RecvOutcome {
        let mut oc = RecvOutcome::default();
        let mut used = 0;
        let chunk: &[u8] = match &input {
            RecvBuf::Mut(m) => m,
            RecvBuf::Shared(s) => s,
        };
        // 1. Bytes left over from earlier receives: complete them in the assembly buffer,
        //    taking only what the pending records need, so the rest can be handled in place.
        while !self.rx.is_empty() && used < chunk.len() {
            oc.assembled = true;
            let need = record_need(&self.rx).max(1);
            let take = need.min(chunk.len() - used);
            self.rx.extend_from_slice(&chunk[used..used + take]);
            used += take;
            let mut rx = std::mem::take(&mut self.rx);
            let r = run_pump(&mut self.pump, state, now, &mut rx, None, out, &mut oc);
            match r {
                Some(consumed) => {
                    rx.drain(..consumed);
                    self.rx = rx;
                }
                None => return oc,
            }
            if oc.peer_closed {
                return oc;
            }
        }
        if used == chunk.len() {
            return oc;
        }
        // 2. The rest: in place if the buffer is ours alone, else assembled.
        match input {
            RecvBuf::Mut(ring) => {
                let data = &mut ring[used..];
                let Some(consumed) =
                    run_pump(&mut self.pump, state, now, data, Some(used), out, &mut oc)
                else {
                    return oc;
                };
                if !oc.peer_closed && consumed < data.len() {
                    self.rx.extend_from_slice(&data[consumed..]);
                }
            }
            RecvBuf::Shared(chunk) => {
                oc.assembled = true;
                self.rx.extend_from_slice(&chunk[used..]);
                let mut rx = std::mem::take(&mut self.rx);
                if let Some(consumed) =
                    run_pump(&mut self.pump, state, now, &mut rx, None, out, &mut oc)
                {
                    rx.drain(..consumed);
                    self.rx = rx;
                }
            }
        }
        if self.rx.is_empty() && self.rx.capacity() > KEEP_TX_CAPACITY {
            // A large record was assembled; don't keep its buffer on an idle connection.
            self.rx = Vec::new();
        }
        oc
    }

    /// Builds the next ciphertext batch: pending handshake/alert bytes, then up to `budget`
    /// bytes of plaintext from `out` sealed in passes of `chunk` bytes. Returns the segment to
    /// send (or `None` if there is nothing), and the number of encrypt passes.
    pub(crate) fn next_batch(
        &mut self,
        out: &mut VecDeque<OutSeg>,
        queued: usize,
        chunk: usize,
        budget: usize,
    ) -> Result<Option<(OutSeg, u64)>, PumpError> {
        if let Some(seg) = self.unsent.take() {
            return Ok(Some((seg, 0)));
        }
        let chunk = chunk.max(1);
        let mut buf = self.tx.take().unwrap_or_else(take_tx_buf);
        // Sized for what is queued (small for request/response traffic): plaintext, plus a
        // record header and tag per 16 KiB record, plus room for handshake/ticket bytes.
        let plain = queued.min(budget);
        let want = plain + (plain / MAX_RECORD + 1) * RECORD_OVERHEAD + 512;
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let can_encrypt = !self.pump.is_handshaking() && !self.close_notify && self.error.is_none();
        let in_place = can_encrypt && self.pump.seals_in_place();
        if in_place {
            // A KeyUpdate due within this batch goes out before it.
            self.pump.reserve_records((plain / MAX_RECORD + 2) as u64)?;
        }
        let mut n = 0;
        while self.pump.wants_write() {
            if n == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            n += self.pump.poll_transmit(&mut buf[n..])?;
        }
        let mut flight = Flight::default();
        let mut passes = 0;
        if in_place {
            (n, passes) =
                self.seal_frames_in_place(out, &mut buf, n, queued, budget, &mut flight)?;
        }
        while can_encrypt && !in_place && flight.plain < budget && !out.is_empty() {
            // Stage small frames (and the head of a large one) up to `chunk` bytes.
            self.stage.clear();
            let mut direct: Option<Range<usize>> = None;
            while self.stage.len() < chunk {
                let Some(seg) = out.front_mut() else { break };
                let (hdr, body) = seg.parts();
                let large = body.len() >= MAX_RECORD;
                if self.stage.is_empty() && hdr.is_empty() && large {
                    // A large body: seal whole records of it straight from the caller's bytes
                    // (its last partial record is staged with what follows).
                    let n = body.len().min(chunk.max(MAX_RECORD)) / MAX_RECORD * MAX_RECORD;
                    direct = Some(0..n);
                    break;
                }
                let room = chunk - self.stage.len();
                let h = hdr.len().min(room);
                self.stage.extend_from_slice(&hdr[..h]);
                let b = if h == hdr.len() {
                    let mut b = body.len().min(chunk - self.stage.len());
                    if large {
                        // Copy only enough of a large body to end the staged plaintext on a
                        // record boundary; the next pass seals the rest in place.
                        b = b.min((MAX_RECORD - self.stage.len() % MAX_RECORD) % MAX_RECORD);
                    }
                    self.stage.extend_from_slice(&body[..b]);
                    b
                } else {
                    0
                };
                seg.advance(h + b);
                if seg.remaining() == 0 {
                    out.pop_front();
                    flight.frames += 1;
                } else if large {
                    break;
                }
            }
            let sealed = if let Some(r) = direct {
                let Some(seg) = out.front_mut() else { break };
                let plain = &seg.parts().1[r.clone()];
                let k = seal(&mut self.pump, plain, &mut buf, n)?;
                seg.advance(r.len());
                flight.plain += r.len();
                if seg.remaining() == 0 {
                    out.pop_front();
                    flight.frames += 1;
                }
                k
            } else {
                if self.stage.is_empty() {
                    break;
                }
                flight.plain += self.stage.len();
                seal(&mut self.pump, &self.stage, &mut buf, n)?
            };
            n += sealed;
            passes += 1;
        }
        if out.is_empty() && self.stage.capacity() > KEEP_TX_CAPACITY {
            self.stage = Vec::new();
        }
        if n == 0 {
            self.put_back(buf, out.is_empty());
            return Ok(None);
        }
        flight.cipher = n;
        self.flight = flight;
        Ok(Some((OutSeg::buf(buf, n), passes)))
    }

    /// The own record layer's send path: frames are copied once, straight into the record's
    /// plaintext slot in `buf` (after `at` bytes already there), and each record is sealed in
    /// place (`header | plaintext | type | tag`). Records are filled to 16 KiB with whatever is
    /// queued. A batch stops at `budget` plaintext bytes, except that it finishes a frame it
    /// started when the rest fits one record (else a 64 KiB frame would leave its last few
    /// bytes for a send of their own). Returns the bytes in `buf` and the records sealed.
    fn seal_frames_in_place(
        &mut self,
        out: &mut VecDeque<OutSeg>,
        buf: &mut Vec<u8>,
        mut at: usize,
        queued: usize,
        budget: usize,
        flight: &mut Flight,
    ) -> Result<(usize, u64), PumpError> {
        let mut records = 0;
        while let Some(front) = out.front() {
            if flight.plain >= budget {
                let started = front.remaining() < front.wire_len();
                if !(started && front.remaining() <= MAX_RECORD) {
                    break;
                }
            }
            let est = queued.saturating_sub(flight.plain).clamp(1, MAX_RECORD);
            let need = at + SEAL_OVERHEAD + est;
            if buf.len() < need {
                buf.resize(need, 0);
            }
            let cap = (buf.len() - at - SEAL_OVERHEAD).min(MAX_RECORD);
            let slot = &mut buf[at + RECORD_HEADER..at + RECORD_HEADER + cap];
            let mut filled = 0;
            while filled < cap {
                let Some(seg) = out.front_mut() else { break };
                let (hdr, body) = seg.parts();
                let h = hdr.len().min(cap - filled);
                slot[filled..filled + h].copy_from_slice(&hdr[..h]);
                filled += h;
                let b = if h == hdr.len() {
                    let b = body.len().min(cap - filled);
                    slot[filled..filled + b].copy_from_slice(&body[..b]);
                    filled += b;
                    b
                } else {
                    0
                };
                seg.advance(h + b);
                if seg.remaining() == 0 {
                    out.pop_front();
                    flight.frames += 1;
                }
            }
            if filled == 0 {
                break;
            }
            at += self.pump.seal_in_place(&mut buf[at..], filled)?;
            flight.plain += filled;
            records += 1;
        }
        Ok((at, records))
    }

    /// Takes the send buffer back after its send completed (kept if small or still busy).
    pub(crate) fn put_back(&mut self, buf: Vec<u8>, idle: bool) {
        if !idle || buf.capacity() <= KEEP_TX_CAPACITY {
            self.tx = Some(buf);
        } else {
            recycle_tx_buf(buf);
        }
    }
}

/// Large send buffers released by idle connections, kept per shard thread for the next batch
/// of any connection: a 64 KiB echo goes idle after every frame, and a fresh buffer each time
/// cost page faults and zero-filling (≈ 2 % of a TLS stream server's CPU). They stay
/// initialized (`len == capacity`), so reuse does not zero them again.
const TX_POOL_MAX_BUFS: usize = 16;
/// Largest buffer the pool keeps (a batch is at most `chunk_bytes` plus record overhead).
const TX_POOL_MAX_BUF: usize = 1 << 20;

thread_local! {
    static TX_POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_tx_buf() -> Vec<u8> {
    TX_POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default()
}

fn recycle_tx_buf(mut buf: Vec<u8>) {
    if buf.capacity() > TX_POOL_MAX_BUF {
        return;
    }
    // The bytes are initialized up to `len`; extend to the capacity once (a no-op on reuse).
    buf.resize(buf.capacity(), 0);
    TX_POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < TX_POOL_MAX_BUFS {
            p.push(buf);
        }
    });
}

/// Seals `plain` into `buf[at..]`, growing `buf` as the pump asks.
fn seal(
    pump: &mut TlsPump,
    plain: &[u8],
    buf: &mut Vec<u8>,
    at: usize,
) -> Result<usize, PumpError> {
    loop {
        match pump.encrypt(plain, &mut buf[at..]) {
            Ok(k) => return Ok(k),
            Err(PumpError::InsufficientSize { required }) => {
                let len = at + required;
                if len <= buf.len() {
                    return Err(PumpError::Internal("encrypt_size"));
                }
                buf.resize(len, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the pump over `data` until it needs input. Returns how many leading bytes it discarded
/// (`None` after a fatal error, recorded in `oc`). With `ring_base = Some(off)`, `data` starts at
/// offset `off` of a receive buffer and frames are reported in place (offsets in that buffer);
/// otherwise frames are copied out.
fn run_pump(
    pump: &mut TlsPump,
    state: &mut ConnState,
    now: Instant,
    data: &mut [u8],
    ring_base: Option<usize>,
    out: &mut Vec<Decoded>,
    oc: &mut RecvOutcome,
) -> Option<usize> {
    let mut pos = 0;
    let mut idle = 0;
    loop {
        let p = match pump.handle_ciphertext(&mut data[pos..]) {
            Ok(p) => p,
            Err(e) => {
                oc.tls_error = Some(e);
                return None;
            }
        };
        oc.handshake_completed |= p.handshake_completed;
        if !p.plaintext.is_empty() {
            oc.plaintext += p.plaintext.len();
            let r = (pos + p.plaintext.start)..(pos + p.plaintext.end);
            let plain = &data[r.clone()];
            if ring_base.is_some() {
                oc.records_in_place += 1;
            }
            let res = state.handle_recv(now, plain, |d| match d {
                Decoded::InPlace { start, len } => match ring_base {
                    Some(base) => out.push(Decoded::InPlace {
                        start: base + r.start + start,
                        len,
                    }),
                    None => out.push(Decoded::Assembled(Bytes::copy_from_slice(
                        &plain[start..start + len],
                    ))),
                },
                a => out.push(a),
            });
            if let Err(e) = res {
                oc.frame_error = Some(e);
                return None;
            }
        }
        let progressed = p.discard > 0 || !p.plaintext.is_empty();
        pos += p.discard;
        match p.status {
            Status::CallAgain => {
                idle = if progressed { 0 } else { idle + 1 };
                if idle > MAX_IDLE_STEPS {
                    oc.tls_error = Some(PumpError::Internal("pump_stalled"));
                    return None;
                }
            }
            Status::NeedsInput => return Some(pos),
            _ => {
                oc.peer_closed = true;
                return Some(data.len());
            }
        }
    }
}

/// Bytes still missing to complete the records that `buf` starts (0 if it ends on a record
/// boundary). Walks record headers; a partial header needs the rest of the header first.
fn record_need(buf: &[u8]) -> usize {
    let mut off = 0;
    loop {
        if off == buf.len() {
            return 0;
        }
        if buf.len() - off < RECORD_HEADER {
            return RECORD_HEADER - (buf.len() - off);
        }
        let len = usize::from(u16::from_be_bytes([buf[off + 3], buf[off + 4]]));
        let end = off + RECORD_HEADER + len;
        if end > buf.len() {
            return end - buf.len();
        }
        off = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_need_walks_headers() {
        assert_eq!(record_need(&[]), 0);
        assert_eq!(record_need(&[23, 3, 3]), 2);
        assert_eq!(record_need(&[23, 3, 3, 0, 10]), 10);
        let mut two = vec![23, 3, 3, 0, 2, 9, 9];
        assert_eq!(record_need(&two), 0);
        two.extend_from_slice(&[23, 3, 3, 1, 0, 1]);
        assert_eq!(record_need(&two), 255);
    }

    #[test]
    fn flight_credits_plaintext_in_proportion() {
        let mut f = Flight {
            plain: 1000,
            frames: 3,
            cipher: 1100,
            ..Flight::default()
        };
        assert_eq!(f.written(550), (500, 0));
        assert_eq!(f.written(0), (0, 0));
        assert_eq!(f.written(550), (500, 3));
        assert_eq!(f.written(10), (0, 0));
    }
}

/// The client side of a TLS dial: the caller's config (policy: roots, PQ groups, ALPN,
/// resumption store) and the server name to verify.
#[derive(Clone, Debug)]
pub struct TlsDial {
    /// The rustls client config.
    pub config: std::sync::Arc<rustls::ClientConfig>,
    /// The name the server certificate must be valid for.
    pub server_name: rustls::pki_types::ServerName<'static>,
}
