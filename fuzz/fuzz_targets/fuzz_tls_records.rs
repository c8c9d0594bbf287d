//! Fuzz target `fuzz_tls_records`: the record handling of a shard's TLS connection
//! (`shard/src/tls_conn.rs`, through `ron_shard::fuzzing::TlsConnDriver`): received ciphertext
//! split at arbitrary points into receive completions, each handled on the in-place path
//! (writable provided buffer) or the shared (assembling) path, during the handshake and after
//! it, with records tampered with on the way.
//!
//! A real peer connection (the same code, other side) sends the handshake flights, then frames
//! the input chooses (coalesced and sealed by its send path with arbitrary chunk and budget).
//! The ciphertext is cut into records and the input flips bytes in records, replays, swaps or
//! drops records, inserts arbitrary bytes between them, or truncates the stream.
//!
//! Invariants:
//! - never a panic; frames are always a prefix of the frames the peer sent (nothing forged,
//!   reordered or duplicated), each within the frame ceiling;
//! - a record that fails authentication (flipped, replayed, out of order, after a dropped one)
//!   fails the connection with a TLS error, and nothing is delivered from it or after it: the
//!   frames delivered are exactly those complete in the records before it (computed from the
//!   record sizes); after the error more input yields no frames and the same failure, and what
//!   the connection sends afterwards carries no application data (the peer gets no frame);
//! - every valid record before the first tampered one is delivered;
//! - an oversized frame header inside authenticated plaintext gives `TooLarge` with the frames
//!   before it delivered;
//! - with nothing tampered, the handshake completes and every frame arrives.
#![no_main]

#[path = "common/tls.rs"]
mod tls;

use arbitrary::Arbitrary;
use bytes::Bytes;
use ron_shard::frame::FrameError;
use ron_shard::fuzzing::{RecvResult, TlsConnDriver};

const RECORD_HEADER: usize = 5;
/// Bound on the plaintext one run sends (keeps runs fast).
const MAX_PLAIN: usize = 1 << 20;
/// Bound on plaintext per staging chunk (so on the records of small frames) in one run.
const MAX_STAGED_RECORDS: usize = 4096;
/// Inner content type byte and AEAD tag of a TLS 1.3 record (all suites of the provider).
const RECORD_OVERHEAD: usize = 1 + 16;

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Cut {
    len: u16,
    writable: bool,
}

#[derive(Arbitrary, Debug)]
enum Tamper {
    /// Xor a byte of record `rec`'s payload (`x` forced non-zero).
    Flip { rec: u16, at: u16, x: u8 },
    /// Insert a copy of record `from` before position `at`.
    Replay { from: u16, at: u16 },
    /// Swap the records at positions `at` and `at + 1`.
    Swap(u16),
    /// Drop the record at position `at`.
    Drop(u16),
    /// Arbitrary bytes before position `at`.
    Insert { at: u16, bytes: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct FrameSpec {
    len: u16,
    big: bool,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    target_server: bool,
    hybrid: bool,
    /// Frame ceiling: 1 MiB, or this (small) value when `small_max`.
    small_max: bool,
    max: u16,
    /// Splits of the handshake bytes the target receives.
    hs_cuts: Vec<Cut>,
    /// A byte of the handshake stream to flip: (offset, xor).
    hs_flip: Option<(u16, u8)>,
    frames: Vec<FrameSpec>,
    /// The peer ends with close_notify after its frames.
    peer_close: bool,
    chunk: u16,
    budget: u32,
    tampers: Vec<Tamper>,
    /// Keep only this many bytes of the (tampered) data stream.
    truncate: Option<u32>,
    cuts: Vec<Cut>,
    /// Fed after a TLS failure.
    after: Vec<u8>,
}

/// A piece of the tampered stream.
#[derive(Clone)]
enum Piece {
    /// Original record `i` (its bytes possibly flipped).
    Record { i: usize, flipped: bool },
    /// Arbitrary bytes.
    Garbage(Vec<u8>),
}

/// Feeds `bytes` in the cuts given (then the rest in one writable chunk), stopping at the first
/// error. Returns the frames, the error results and whether it stopped early.
fn feed(t: &mut TlsConnDriver, bytes: &[u8], cuts: &[Cut], res: &mut Outcome) {
    let mut pos = 0;
    let mut cuts = cuts.iter();
    while pos < bytes.len() {
        let c = cuts.next().copied().unwrap_or(Cut {
            len: u16::MAX,
            writable: true,
        });
        let k = (usize::from(c.len) + 1).min(bytes.len() - pos);
        let r = t.recv(&bytes[pos..pos + k], c.writable);
        pos += k;
        if res.absorb(r) {
            return;
        }
    }
}

#[derive(Default, Debug)]
struct Outcome {
    frames: Vec<Bytes>,
    handshake_completed: bool,
    peer_closed: bool,
    frame_error: Option<FrameError>,
    tls_error: Option<&'static str>,
}

impl Outcome {
    /// Takes one receive's result; true if the connection is now failed or closed by the peer
    /// (the shard stops reading either way).
    fn absorb(&mut self, r: RecvResult) -> bool {
        assert!(
            r.frame_error.is_none() || r.tls_error.is_none(),
            "one receive reported both a frame and a TLS error"
        );
        self.frames.extend(r.frames);
        self.handshake_completed |= r.handshake_completed;
        self.peer_closed |= r.peer_closed;
        if r.peer_closed {
            assert!(r.frame_error.is_none() && r.tls_error.is_none());
            return true;
        }
        if let Some(e) = r.frame_error {
            self.frame_error = Some(e);
            return true;
        }
        if let Some(e) = r.tls_error {
            assert!(e.is_fatal(), "non-fatal error from a receive: {e:?}");
            self.tls_error = Some(e.kind());
            return true;
        }
        false
    }
}

/// After a TLS failure: more input yields no frame and fails again, and what the connection
/// sends now carries no frame for the peer.
fn check_failed(t: &mut TlsConnDriver, p: &mut TlsConnDriver, after: &[u8]) {
    if !after.is_empty() {
        let r = t.recv(after, true);
        assert!(r.frames.is_empty(), "frames after a failed record");
        assert!(r.tls_error.is_some(), "input after a failure did not fail");
    }
    if let Ok(wire) = t.send(&[Bytes::from_static(b"after the failure")], 1024, 1 << 16) {
        let r = p.recv(&wire, false);
        assert!(
            r.frames.is_empty(),
            "a failed connection sent application data"
        );
    }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let max = if input.small_max {
        u32::from(input.max)
    } else {
        1 << 20
    };
    let (client, server) = tls::pumps(input.hybrid);
    let (tp, pp) = if input.target_server {
        (server, client)
    } else {
        (client, server)
    };
    let mut t = TlsConnDriver::new(tp, max);
    let mut p = TlsConnDriver::new(pp, 1 << 20);

    // Handshake: the peer's flights reach the target in the input's splits (one byte possibly
    // flipped); the target's replies reach the peer whole.
    let mut hs = Outcome::default();
    let mut hs_offset = 0usize;
    let mut hs_tampered = false;
    for _ in 0..8 {
        let Ok(mut a) = p.send(&[], 4096, 1 << 16) else {
            return;
        };
        if let Some((at, x)) = input.hs_flip {
            let at = usize::from(at);
            if x != 0 && at >= hs_offset && at < hs_offset + a.len() {
                a[at - hs_offset] ^= x;
                hs_tampered = true;
            }
        }
        hs_offset += a.len();
        feed(&mut t, &a, &input.hs_cuts, &mut hs);
        assert!(hs.frames.is_empty(), "frames during the handshake");
        if hs.tls_error.is_some() {
            check_failed(&mut t, &mut p, &input.after);
            return;
        }
        let b = match t.send(&[], 4096, 1 << 16) {
            Ok(b) => b,
            Err(e) => panic!("target send failed without a receive error: {e:?}"),
        };
        if !b.is_empty() {
            let r = p.recv(&b, false);
            assert!(r.frames.is_empty());
            if r.tls_error.is_some() {
                assert!(hs_tampered, "peer failed on an untampered handshake");
                return;
            }
        }
        if a.is_empty() && b.is_empty() {
            break;
        }
    }
    let done = !t.pump().is_handshaking() && !p.pump().is_handshaking();
    if !hs_tampered {
        assert!(done, "untampered handshake did not complete");
        assert!(hs.handshake_completed);
    }
    if !done {
        return;
    }

    // Data: the peer's frames as records.
    let chunk = usize::from(input.chunk).max(1);
    // Small staging chunks make one record per chunk: bound the record count too (a 1-byte
    // chunk over 1 MiB took 37 s per run).
    let max_plain = MAX_PLAIN.min(chunk * MAX_STAGED_RECORDS);
    let mut frames: Vec<Bytes> = Vec::new();
    let mut total = 0;
    for f in &input.frames {
        let len = usize::from(f.len) * if f.big { 3 } else { 1 };
        total += len;
        if total > max_plain {
            break;
        }
        frames.push(Bytes::from(vec![f.fill; len]));
    }
    let budget = (input.budget as usize % (1 << 20)).max(1);
    let mut wire = p.send(&frames, chunk, budget).expect("peer send");
    let data_len = wire.len();
    if input.peer_close {
        p.close().expect("peer close_notify");
        wire.extend(p.send(&[], chunk, budget).expect("peer close send"));
        assert!(wire.len() > data_len, "close_notify not sent");
    }

    // Records and their plaintext sizes.
    let mut recs = Vec::new();
    let mut off = 0;
    while off < wire.len() {
        assert!(
            wire.len() - off >= RECORD_HEADER,
            "partial record header sent"
        );
        let len = usize::from(u16::from_be_bytes([wire[off + 3], wire[off + 4]]));
        let end = off + RECORD_HEADER + len;
        assert!(end <= wire.len(), "partial record sent");
        recs.push((off..end, wire[off]));
        off = end;
    }
    let plain_total: usize = frames.iter().map(|f| 4 + f.len()).sum();
    // Records after the data carry the close_notify alert (no application data).
    let is_close = |i: usize| recs[i].0.start >= data_len;
    let rec_plain: Vec<usize> = recs
        .iter()
        .enumerate()
        .map(|(i, (r, _))| {
            if is_close(i) {
                0
            } else {
                r.len().saturating_sub(RECORD_HEADER + RECORD_OVERHEAD)
            }
        })
        .collect();
    // The sizes are exact when every record is application data and they add up.
    let exact = recs
        .iter()
        .all(|(r, ty)| *ty == 23 && r.len() > RECORD_HEADER + RECORD_OVERHEAD)
        && rec_plain.iter().sum::<usize>() == plain_total;

    // Frames as the target may deliver them: up to the first one above its ceiling.
    let mut frame_ends = Vec::new();
    let mut oversize: Option<(usize, u32)> = None; // (header end offset, length)
    let mut at = 0;
    for f in &frames {
        if f.len() > max as usize {
            oversize = Some((at + 4, f.len() as u32));
            break;
        }
        at += 4 + f.len();
        frame_ends.push(at);
    }
    let frames_within = |plain: usize| frame_ends.iter().take_while(|&&e| e <= plain).count();

    // Tamper.
    let n = recs.len();
    let mut pieces: Vec<Piece> = (0..n)
        .map(|i| Piece::Record { i, flipped: false })
        .collect();
    // Flips accumulate on a copy of the wire (two flips of one byte can cancel out); whether a
    // record was changed is decided from its bytes afterwards.
    let mut tampered_wire = wire.clone();
    for tm in &input.tampers {
        match tm {
            Tamper::Flip { rec, at, x } if n > 0 => {
                let i = usize::from(*rec) % n;
                let r = &recs[i].0;
                let payload = r.len() - RECORD_HEADER;
                if payload == 0 {
                    continue;
                }
                let pos = r.start + RECORD_HEADER + usize::from(*at) % payload;
                tampered_wire[pos] ^= if *x == 0 { 1 } else { *x };
            }
            Tamper::Replay { from, at } if n > 0 => {
                let i = usize::from(*from) % n;
                let at = usize::from(*at) % (pieces.len() + 1);
                pieces.insert(at, Piece::Record { i, flipped: false });
            }
            Tamper::Swap(at) if pieces.len() >= 2 => {
                let at = usize::from(*at) % (pieces.len() - 1);
                pieces.swap(at, at + 1);
            }
            Tamper::Drop(at) if !pieces.is_empty() => {
                let at = usize::from(*at) % pieces.len();
                pieces.remove(at);
            }
            Tamper::Insert { at, bytes } if !bytes.is_empty() => {
                let at = usize::from(*at) % (pieces.len() + 1);
                pieces.insert(at, Piece::Garbage(bytes.clone()));
            }
            _ => {}
        }
    }
    let changed = |i: usize| tampered_wire[recs[i].0.clone()] != wire[recs[i].0.clone()];
    for pc in pieces.iter_mut() {
        if let Piece::Record { i, flipped } = pc {
            *flipped = changed(*i);
        }
    }
    let any_flipped = (0..n).any(changed);
    let mut stream = Vec::new();
    let mut bounds = Vec::new(); // end offset of each piece in `stream`
    for pc in &pieces {
        match pc {
            Piece::Record { i, .. } => stream.extend_from_slice(&tampered_wire[recs[*i].0.clone()]),
            Piece::Garbage(b) => stream.extend_from_slice(b),
        }
        bounds.push(stream.len());
    }
    if let Some(tr) = input.truncate {
        stream.truncate(tr as usize % (stream.len() + 1));
    }

    // What the receiver must do, piece by piece: records decrypt only in sequence and
    // untouched; garbage makes the rest unknown.
    #[derive(Debug, PartialEq)]
    enum Expect {
        /// The stream ends (or is cut) after `seq` good records: no TLS error.
        Clean,
        /// A piece after `seq` good records must fail.
        Fail,
        /// Garbage after `seq` good records: at least those are delivered.
        Unknown,
        /// The close_notify record came in sequence after `seq - 1` good records: the rest is
        /// ignored, no TLS error.
        Closed,
    }
    let mut seq = 0usize;
    let mut expect = Expect::Clean;
    for (k, pc) in pieces.iter().enumerate() {
        if bounds[k] > stream.len() {
            // Cut inside this piece (a partial record is only buffered).
            if matches!(pc, Piece::Garbage(_)) {
                expect = Expect::Unknown;
            }
            break;
        }
        match pc {
            Piece::Record { i, flipped } if *i == seq && !*flipped => {
                seq += 1;
                if is_close(*i) {
                    expect = Expect::Closed;
                    break;
                }
            }
            Piece::Record { .. } => {
                expect = Expect::Fail;
                break;
            }
            Piece::Garbage(_) => {
                expect = Expect::Unknown;
                break;
            }
        }
    }
    let untouched =
        pieces.len() == n && !any_flipped && matches!(expect, Expect::Clean | Expect::Closed);

    let mut out = Outcome::default();
    feed(&mut t, &stream, &input.cuts, &mut out);

    // Always: a prefix of what was sent, within the ceiling.
    assert!(
        out.frames.len() <= frame_ends.len(),
        "more frames than sent"
    );
    for (g, f) in out.frames.iter().zip(&frames) {
        assert!(g == f, "delivered frame differs from the sent one");
        assert!(g.len() <= max as usize);
    }
    if let Some(e) = out.frame_error {
        let Some((_, len)) = oversize else {
            panic!("frame error {e:?} without an oversized frame")
        };
        assert_eq!(e, FrameError::TooLarge { len, max });
        assert_eq!(
            out.frames.len(),
            frame_ends.len(),
            "frames before the oversized one"
        );
    }
    if exact {
        let good_plain: usize = rec_plain[..seq].iter().sum();
        let lower = frames_within(good_plain);
        let oversize_seen = oversize.is_some_and(|(h, _)| h <= good_plain);
        if oversize_seen {
            assert!(
                out.frame_error.is_some(),
                "oversized frame in good records not refused"
            );
        } else if out.frame_error.is_none() {
            assert!(out.frames.len() >= lower, "frames of good records missing");
        }
        match expect {
            Expect::Clean | Expect::Closed if out.frame_error.is_none() => {
                assert!(
                    out.tls_error.is_none(),
                    "clean records failed: {:?}",
                    out.tls_error
                );
                assert_eq!(out.frames.len(), lower, "frames beyond the good records");
            }
            Expect::Fail if out.frame_error.is_none() => {
                assert!(out.tls_error.is_some(), "a tampered record was accepted");
                assert_eq!(
                    out.frames.len(),
                    lower,
                    "frames delivered from a failed record (or missing)"
                );
            }
            _ => {}
        }
    } else if expect == Expect::Fail && out.frame_error.is_none() {
        assert!(out.tls_error.is_some(), "a tampered record was accepted");
    }
    if expect == Expect::Closed && out.frame_error.is_none() {
        assert!(out.peer_closed, "close_notify in sequence not reported");
    }
    if out.peer_closed {
        assert!(out.tls_error.is_none() && out.frame_error.is_none());
        assert!(
            matches!(expect, Expect::Closed | Expect::Unknown) || !exact,
            "peer_closed without a close_notify in sequence"
        );
    }
    if untouched && input.truncate.is_none() && oversize.is_none() {
        assert!(out.tls_error.is_none() && out.frame_error.is_none());
        assert_eq!(out.frames.len(), frames.len(), "frames lost");
        assert!(!t.mid_frame());
    }
    if out.tls_error.is_some() {
        check_failed(&mut t, &mut p, &input.after);
    }
});
