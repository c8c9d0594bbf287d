//! Fuzz target `fuzz_tls_pump`: `ron_shard::tls_pump::TlsPump`, server side or client side,
//! talking to a real peer pump (rustls configs on a fixed self-signed certificate, see
//! `common/tls.rs`) through a channel the input controls: the peer's flights delivered in
//! arbitrary splits, with bytes flipped or dropped, or replaced by arbitrary bytes; the target's
//! own output read through arbitrary buffer sizes; application data, close_notify and too-small
//! encrypt buffers on both sides.
//!
//! Invariants, checked on both pumps after every call (the caller contract of `TlsPump`):
//! - never a panic, and every call returns a typed error or progress: a `CallAgain` loop that
//!   neither discards nor yields plaintext is bounded, `discard` never exceeds the buffer and
//!   the plaintext range lies inside the discarded prefix; `PeerClosed` / `Closed` discard all;
//! - `handshake_completed` comes at most once per connection;
//! - a fatal error sticks: the next `handle_ciphertext` and `encrypt` return the same error;
//! - `encrypt` into a too-small buffer returns `InsufficientSize { required }` with
//!   `required > len`, leaves the buffer untouched, and succeeds with `required` bytes;
//! - the plaintext a pump yields is always a prefix of what its peer encrypted (nothing forged,
//!   nothing reordered, whatever the channel did);
//! - with an untampered channel (splits and buffer sizes only), once both sides are flushed
//!   both handshakes are complete, neither pump failed, and all data sent arrived (at an end
//!   that has not closed).
//!
//! An end that queued close_notify takes no more input, as in the shard (a graceful close stops
//! reading first): with rustls 0.23 a peer error after our close_notify trips a debug assertion
//! inside rustls (`!self.sent_fatal_alert`), a panic in debug builds of any caller that keeps
//! reading after closing.
#![no_main]

#[path = "common/tls.rs"]
mod tls;

use arbitrary::Arbitrary;
use ron_shard::tls_pump::{PumpError, Status, TlsPump};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Deliver up to `n` bytes of the peer's output, unchanged.
    Peer(u16),
    /// Deliver up to `n` bytes of the peer's output with the byte at `at` (mod the length) xored
    /// with `x`.
    PeerFlip { n: u16, at: u16, x: u8 },
    /// Lose the next `n` bytes of the peer's output.
    PeerDrop(u16),
    /// Arbitrary bytes, as if from the peer.
    Raw(Vec<u8>),
    /// The target's pending output read through a buffer of `n` bytes, delivered to the peer.
    Transmit(u16),
    /// The target encrypts `len` bytes into a buffer of `out` bytes (retried at the size asked).
    Encrypt { len: u16, out: u16 },
    /// The peer encrypts `len` bytes.
    PeerEncrypt(u16),
    /// The target queues close_notify.
    Close,
    /// The peer queues close_notify.
    PeerClose,
}

#[derive(Arbitrary, Debug)]
struct Input {
    target_server: bool,
    hybrid: bool,
    ops: Vec<Op>,
}

/// One end: its pump, receive buffer and what it decrypted.
struct End {
    pump: TlsPump,
    rx: Vec<u8>,
    /// Plaintext yielded so far.
    got: Vec<u8>,
    /// Plaintext it encrypted so far (what the other end may receive).
    sent: Vec<u8>,
    failed: Option<PumpError>,
    completions: usize,
    peer_closed: bool,
    /// This end queued close_notify: like the shard (which stops reading when it closes), it
    /// takes no more input. (rustls 0.23 marks close_notify as its one "fatal" alert, so a peer
    /// error after it trips `debug_assert!(!self.sent_fatal_alert)` in `send_fatal_alert`.)
    close_queued: bool,
}

impl End {
    fn new(pump: TlsPump) -> Self {
        Self {
            pump,
            rx: Vec::new(),
            got: Vec::new(),
            sent: Vec::new(),
            failed: None,
            completions: 0,
            peer_closed: false,
            close_queued: false,
        }
    }

    /// Appends `bytes` to the receive buffer and processes it following the call order.
    fn feed(&mut self, bytes: &[u8]) {
        if self.close_queued {
            return;
        }
        self.rx.extend_from_slice(bytes);
        self.run();
    }

    fn run(&mut self) {
        if let Some(e) = &self.failed {
            let again = self.pump.handle_ciphertext(&mut self.rx);
            assert_eq!(again.as_ref().err(), Some(e), "a fatal error must stick");
            return;
        }
        let mut idle = 0usize;
        loop {
            let len = self.rx.len();
            match self.pump.handle_ciphertext(&mut self.rx) {
                Ok(p) => {
                    assert!(p.discard <= len, "discard {} > buffer {len}", p.discard);
                    assert!(
                        p.plaintext.start <= p.plaintext.end && p.plaintext.end <= p.discard,
                        "plaintext {:?} outside the discarded {}",
                        p.plaintext,
                        p.discard
                    );
                    if p.handshake_completed {
                        self.completions += 1;
                        assert_eq!(self.completions, 1, "handshake completed twice");
                        assert!(!self.pump.is_handshaking());
                    }
                    let progressed = p.discard > 0 || !p.plaintext.is_empty();
                    self.got.extend_from_slice(p.plaintext(&self.rx));
                    self.rx.drain(..p.discard);
                    match p.status {
                        Status::CallAgain => {
                            idle = if progressed { 0 } else { idle + 1 };
                            assert!(idle < 10_000, "CallAgain without progress");
                        }
                        Status::NeedsInput => return,
                        Status::PeerClosed | Status::Closed => {
                            assert!(self.rx.is_empty(), "{:?} must discard all", p.status);
                            self.peer_closed = true;
                            return;
                        }
                        s => panic!("unknown status {s:?}"),
                    }
                }
                Err(e) => {
                    assert!(!e.kind().is_empty());
                    assert!(e.is_fatal(), "handle_ciphertext returned a non-fatal {e:?}");
                    self.fail(e);
                    return;
                }
            }
        }
    }

    fn fail(&mut self, e: PumpError) {
        // It sticks for every entry point.
        let again = self.pump.handle_ciphertext(&mut self.rx);
        assert_eq!(again.as_ref().err(), Some(&e), "handle after failure");
        let mut out = [0u8; 64];
        assert_eq!(
            self.pump.encrypt(b"x", &mut out).err().as_ref(),
            Some(&e),
            "encrypt after failure"
        );
        assert!(self.pump.is_closed());
        self.failed = Some(e);
    }

    /// Everything pending for the peer.
    fn transmit_all(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..1 << 16 {
            let n = self.pump.poll_transmit(&mut buf).expect("poll_transmit");
            if n == 0 {
                assert!(!self.pump.wants_write());
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
        panic!("poll_transmit never drains");
    }

    /// Encrypts `len` bytes through a buffer of `out` bytes; returns the ciphertext.
    fn encrypt(&mut self, len: usize, out: usize) -> Vec<u8> {
        let plain: Vec<u8> = (0..len)
            .map(|i| (self.sent.len() + i) as u8 ^ 0x5a)
            .collect();
        let mut buf = vec![0xa5u8; out];
        let was_handshaking = self.pump.is_handshaking();
        match self.pump.encrypt(&plain, &mut buf) {
            Ok(n) => {
                assert!(n <= out);
                self.sent.extend_from_slice(&plain);
                buf.truncate(n);
                buf
            }
            Err(PumpError::InsufficientSize { required }) => {
                assert!(required > out, "required {required} <= given {out}");
                assert!(
                    buf.iter().all(|&b| b == 0xa5),
                    "too-small buffer was written"
                );
                let mut big = vec![0u8; required];
                let n = self
                    .pump
                    .encrypt(&plain, &mut big)
                    .expect("encrypt with the required size");
                assert!(n <= required);
                self.sent.extend_from_slice(&plain);
                big.truncate(n);
                big
            }
            Err(PumpError::HandshakeNotComplete) => {
                assert!(was_handshaking, "HandshakeNotComplete after the handshake");
                Vec::new()
            }
            Err(PumpError::Closed) => Vec::new(),
            Err(e) => {
                if self.failed.is_some() {
                    assert_eq!(self.failed.as_ref(), Some(&e));
                } else {
                    assert!(e.is_fatal());
                    self.fail(e);
                }
                Vec::new()
            }
        }
    }

    fn close(&mut self) {
        match self.pump.queue_close_notify() {
            Ok(()) => self.close_queued = true,
            Err(PumpError::HandshakeNotComplete) => assert!(self.pump.is_handshaking()),
            // Both sides already closed.
            Err(PumpError::Closed) => assert!(self.pump.is_closed()),
            Err(e) => {
                assert!(e.is_fatal(), "queue_close_notify returned {e:?}");
                if self.failed.is_none() {
                    self.fail(e);
                } else {
                    assert_eq!(self.failed.as_ref(), Some(&e));
                }
            }
        }
    }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let (client, server) = tls::pumps(input.hybrid);
    let (target, peer) = if input.target_server {
        (server, client)
    } else {
        (client, server)
    };
    let mut t = End::new(target);
    let mut p = End::new(peer);
    // The peer's output not yet delivered to the target.
    let mut chan: Vec<u8> = Vec::new();
    let mut tampered = false;

    for op in &input.ops {
        chan.extend(p.transmit_all());
        match op {
            Op::Peer(n) => {
                let k = usize::from(*n).min(chan.len());
                let bytes: Vec<u8> = chan.drain(..k).collect();
                t.feed(&bytes);
            }
            Op::PeerFlip { n, at, x } => {
                let k = usize::from(*n).min(chan.len());
                let mut bytes: Vec<u8> = chan.drain(..k).collect();
                if k > 0 && *x != 0 {
                    bytes[usize::from(*at) % k] ^= x;
                    tampered = true;
                }
                t.feed(&bytes);
            }
            Op::PeerDrop(n) => {
                let k = usize::from(*n).min(chan.len());
                tampered |= k > 0;
                chan.drain(..k);
            }
            Op::Raw(bytes) => {
                tampered |= !bytes.is_empty();
                t.feed(bytes);
            }
            Op::Transmit(n) => {
                let mut buf = vec![0u8; usize::from(*n)];
                let k = t.pump.poll_transmit(&mut buf).expect("poll_transmit");
                assert!(k <= buf.len());
                p.feed(&buf[..k]);
            }
            Op::Encrypt { len, out } => {
                let c = t.encrypt(usize::from(*len), usize::from(*out));
                p.feed(&c);
            }
            Op::PeerEncrypt(len) => {
                let c = p.encrypt(usize::from(*len), usize::from(*len) + 64);
                chan.extend(c);
            }
            Op::Close => t.close(),
            Op::PeerClose => p.close(),
        }
        assert!(
            t.sent.starts_with(&p.got) && p.sent.starts_with(&t.got),
            "plaintext yielded that the peer did not send"
        );
    }

    // Flush both ways until nothing moves.
    for _ in 0..16 {
        chan.extend(p.transmit_all());
        let to_peer = t.transmit_all();
        if chan.is_empty() && to_peer.is_empty() {
            break;
        }
        let bytes = std::mem::take(&mut chan);
        t.feed(&bytes);
        p.feed(&to_peer);
    }
    assert!(
        t.sent.starts_with(&p.got) && p.sent.starts_with(&t.got),
        "plaintext yielded that the peer did not send"
    );
    if !tampered {
        assert!(
            t.failed.is_none(),
            "untampered target failed: {:?}",
            t.failed
        );
        assert!(p.failed.is_none(), "untampered peer failed: {:?}", p.failed);
        assert!(!t.pump.is_handshaking() && !p.pump.is_handshaking());
        assert_eq!(t.completions, 1);
        assert_eq!(p.completions, 1);
        // An end that closed stopped reading: it has a prefix (checked above).
        assert!(t.close_queued || t.got == p.sent, "target missed data");
        assert!(p.close_queued || p.got == t.sent, "peer missed data");
    }
});
