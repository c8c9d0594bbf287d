//! The per-connection state machine, sans-IO: it takes received bytes, output progress and
//! `now`, and answers with decoded frames, deadlines and timeout verdicts.
//!
//! Call order (driven by the shard, or by a test with a virtual clock):
//! 1. [`ConnState::handle_recv`] for every received chunk (frames come out in order);
//! 2. [`ConnState::handle_queued`] / [`ConnState::handle_sent`] as output is queued and written;
//! 3. [`ConnState::poll_timeout`] for the next deadline; at or after it,
//!    [`ConnState::handle_timeout`] says whether (and which) timeout fired.
//!
//! It owns no socket and no clock; the shard owns those.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::frame::{Decoded, FrameDecoder, FrameError};

/// Per-connection deadlines. `None` disables one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// A frame that started arriving must complete within this.
    pub read: Option<Duration>,
    /// Queued output must make progress within this.
    pub write: Option<Duration>,
    /// No byte in either direction for this long closes the connection.
    pub idle: Option<Duration>,
}

/// Which deadline fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// A frame did not complete within the read timeout.
    Read,
    /// Output made no progress within the write timeout.
    Write,
    /// No traffic within the idle timeout.
    Idle,
    /// A dial did not connect in time.
    Dial,
    /// The TLS handshake did not finish in time.
    Handshake,
}

impl TimeoutKind {
    /// `read`, `write`, `idle`, `dial` or `handshake`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Idle => "idle",
            Self::Dial => "dial",
            Self::Handshake => "handshake",
        }
    }
}

/// The per-connection state machine (framing, activity and deadline bookkeeping).
#[derive(Debug)]
pub struct ConnState {
    decoder: FrameDecoder,
    timeouts: Timeouts,
    last_activity: Instant,
    frame_started: Option<Instant>,
    write_waiting_since: Option<Instant>,
    queued: usize,
    paused: bool,
}

impl ConnState {
    /// A fresh connection opened at `now`, with frame ceiling `max_frame`.
    pub fn new(now: Instant, max_frame: u32, timeouts: Timeouts) -> Self {
        Self {
            decoder: FrameDecoder::new(max_frame),
            timeouts,
            last_activity: now,
            frame_started: None,
            write_waiting_since: None,
            queued: 0,
            paused: false,
        }
    }

    /// Reading paused by local backpressure (the consumer is slow, or output is above its
    /// high-water mark): the read and idle deadlines stop running, since the peer cannot make
    /// progress; on resume both restart from `now`. The write deadline keeps running.
    pub fn set_paused(&mut self, now: Instant, paused: bool) {
        if self.paused == paused {
            return;
        }
        self.paused = paused;
        if !paused {
            self.last_activity = now;
            if self.frame_started.is_some() {
                self.frame_started = Some(now);
            }
        }
    }

    /// Replaces the deadlines (e.g. after a config reload); effective from the next check.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// The current deadlines.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// True while a frame is partially received.
    pub fn mid_frame(&self) -> bool {
        self.decoder.mid_frame()
    }

    /// Bytes buffered for a partial frame.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Feeds a received chunk; `out` gets each complete frame.
    pub fn handle_recv(
        &mut self,
        now: Instant,
        chunk: &[u8],
        out: impl FnMut(Decoded),
    ) -> Result<(), FrameError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let was_mid = self.decoder.mid_frame();
        let mut completed = false;
        let mut out = out;
        let res = self.decoder.decode(chunk, |d| {
            completed = true;
            out(d)
        });
        self.track(now, was_mid, completed);
        res
    }

    /// Payload bytes still missing from the frame in progress (0 between frames).
    pub fn missing(&self) -> usize {
        self.decoder.missing()
    }

    /// Announced payload length of the frame in progress (0 between frames).
    pub fn body_len(&self) -> usize {
        self.decoder.body_len()
    }

    /// Lends the body buffer of the frame in progress for a direct receive of its missing
    /// bytes (see [`FrameDecoder::take_body`]).
    pub fn take_body(&mut self) -> Option<(bytes::BytesMut, usize)> {
        self.decoder.take_body()
    }

    /// Takes back a lent body buffer after a receive appended `n` bytes to it; `out` gets the
    /// frame if it is complete.
    pub fn put_body(
        &mut self,
        now: Instant,
        buf: bytes::BytesMut,
        n: usize,
        out: impl FnMut(Decoded),
    ) {
        let mut completed = false;
        let mut out = out;
        self.decoder.put_body(buf, |d| {
            completed = true;
            out(d)
        });
        if n > 0 {
            self.track(now, true, completed);
        }
    }

    /// Feeds an owned receive buffer (see [`FrameDecoder::decode_owned`]).
    pub fn handle_recv_owned(
        &mut self,
        now: Instant,
        buf: bytes::BytesMut,
        out: impl FnMut(Decoded),
    ) -> Result<(), FrameError> {
        if buf.is_empty() {
            return Ok(());
        }
        let was_mid = self.decoder.mid_frame();
        let mut completed = false;
        let mut out = out;
        let res = self.decoder.decode_owned(buf, |d| {
            completed = true;
            out(d)
        });
        self.track(now, was_mid, completed);
        res
    }

    /// Activity and read-deadline bookkeeping after bytes arrived.
    fn track(&mut self, now: Instant, was_mid: bool, completed: bool) {
        self.last_activity = now;
        if !self.decoder.mid_frame() {
            self.frame_started = None;
        } else if !was_mid || completed || self.frame_started.is_none() {
            // The frame in progress started in this chunk.
            self.frame_started = Some(now);
        }
    }

    /// `n` bytes were queued for writing.
    pub fn handle_queued(&mut self, now: Instant, n: usize) {
        if n == 0 {
            return;
        }
        if self.queued == 0 {
            self.write_waiting_since = Some(now);
        }
        self.queued += n;
    }

    /// `n` bytes were written (progress); `dropped` bytes were discarded from the queue.
    pub fn handle_sent(&mut self, now: Instant, n: usize) {
        self.queued = self.queued.saturating_sub(n);
        if n > 0 {
            self.last_activity = now;
        }
        self.write_waiting_since = if self.queued == 0 { None } else { Some(now) };
    }

    /// The earliest pending deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (read_t, idle_t) = if self.paused {
            (None, None)
        } else {
            (self.timeouts.read, self.timeouts.idle)
        };
        let read = self.frame_started.zip(read_t).map(|(t, d)| t + d);
        let write = self
            .write_waiting_since
            .zip(self.timeouts.write)
            .map(|(t, d)| t + d);
        let idle = idle_t.map(|d| self.last_activity + d);
        [read, write, idle].into_iter().flatten().min()
    }

    /// Which timeout (if any) has fired at `now`. Read wins over write over idle.
    pub fn handle_timeout(&self, now: Instant) -> Option<TimeoutKind> {
        if let (Some(t), Some(d), false) = (self.frame_started, self.timeouts.read, self.paused) {
            if now >= t + d {
                return Some(TimeoutKind::Read);
            }
        }
        if let (Some(t), Some(d)) = (self.write_waiting_since, self.timeouts.write) {
            if now >= t + d {
                return Some(TimeoutKind::Write);
            }
        }
        if let (Some(d), false) = (self.timeouts.idle, self.paused) {
            if now >= self.last_activity + d {
                return Some(TimeoutKind::Idle);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode;

    const MS: Duration = Duration::from_millis(1);

    fn t() -> Timeouts {
        Timeouts {
            read: Some(100 * MS),
            write: Some(200 * MS),
            idle: Some(1000 * MS),
        }
    }

    fn recv(c: &mut ConnState, now: Instant, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        c.handle_recv(now, chunk, |d| match d {
            Decoded::InPlace { start, len } => v.push(chunk[start..start + len].to_vec()),
            Decoded::Assembled(b) => v.push(b.to_vec()),
        })
        .unwrap();
        v
    }

    #[test]
    fn slow_loris_hits_read_timeout_not_idle() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0, 1024, t());
        assert_eq!(c.poll_timeout(), Some(t0 + 1000 * MS));
        let wire = encode(b"hello").unwrap();
        // One byte every 50 ms keeps the connection active but never completes the frame.
        for i in 0..3u32 {
            let now = t0 + 50 * MS * i;
            assert!(recv(&mut c, now, &wire[i as usize..i as usize + 1]).is_empty());
        }
        assert_eq!(c.poll_timeout(), Some(t0 + 100 * MS));
        assert_eq!(c.handle_timeout(t0 + 99 * MS), None);
        assert_eq!(c.handle_timeout(t0 + 100 * MS), Some(TimeoutKind::Read));
    }

    #[test]
    fn completed_frames_clear_read_deadline() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0, 1024, t());
        let wire = encode(b"hello").unwrap();
        recv(&mut c, t0, &wire[..3]);
        let got = recv(&mut c, t0 + 90 * MS, &wire[3..]);
        assert_eq!(got, vec![b"hello".to_vec()]);
        assert!(!c.mid_frame());
        assert_eq!(c.handle_timeout(t0 + 150 * MS), None);
        assert_eq!(c.poll_timeout(), Some(t0 + 1090 * MS));
        assert_eq!(c.handle_timeout(t0 + 1090 * MS), Some(TimeoutKind::Idle));
    }

    #[test]
    fn new_frame_starting_in_same_chunk_restarts_read_clock() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0, 1024, t());
        let mut wire = encode(b"ab").unwrap().to_vec();
        wire.extend_from_slice(&encode(b"cd").unwrap());
        recv(&mut c, t0, &wire[..5]);
        let got = recv(&mut c, t0 + 80 * MS, &wire[5..9]);
        assert_eq!(got, vec![b"ab".to_vec()]);
        assert!(c.mid_frame());
        assert_eq!(c.handle_timeout(t0 + 120 * MS), None);
        assert_eq!(c.handle_timeout(t0 + 180 * MS), Some(TimeoutKind::Read));
    }

    #[test]
    fn stalled_output_hits_write_timeout_and_progress_resets_it() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0, 1024, t());
        c.handle_queued(t0, 1000);
        assert_eq!(c.poll_timeout(), Some(t0 + 200 * MS));
        c.handle_sent(t0 + 150 * MS, 10);
        assert_eq!(c.handle_timeout(t0 + 250 * MS), None);
        assert_eq!(c.handle_timeout(t0 + 350 * MS), Some(TimeoutKind::Write));
        c.handle_sent(t0 + 340 * MS, 990);
        assert_eq!(c.queued(), 0);
        assert_eq!(c.handle_timeout(t0 + 600 * MS), None);
    }

    #[test]
    fn local_backpressure_suspends_read_and_idle_deadlines() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0, 1024, t());
        recv(&mut c, t0, &[0, 0, 0, 9, 1]);
        c.set_paused(t0 + 10 * MS, true);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.handle_timeout(t0 + 5000 * MS), None);
        // Output still has to move while paused.
        c.handle_queued(t0 + 10 * MS, 10);
        assert_eq!(c.handle_timeout(t0 + 300 * MS), Some(TimeoutKind::Write));
        c.handle_sent(t0 + 300 * MS, 10);
        // Resuming restarts the read window from now.
        c.set_paused(t0 + 6000 * MS, false);
        assert_eq!(c.poll_timeout(), Some(t0 + 6100 * MS));
        assert_eq!(c.handle_timeout(t0 + 6099 * MS), None);
        assert_eq!(c.handle_timeout(t0 + 6100 * MS), Some(TimeoutKind::Read));
    }

    #[test]
    fn too_large_is_reported() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0, 8, Timeouts::default());
        let err = c
            .handle_recv(t0, &encode(&[0; 9]).unwrap(), |_| panic!("no frame"))
            .unwrap_err();
        assert_eq!(err, FrameError::TooLarge { len: 9, max: 8 });
        assert_eq!(c.poll_timeout(), None);
    }
}
