//! Property tests for the size limits (spec/TESTS.md §1.3): frame decoder under arbitrary
//! splits, the pre-allocation length guard, chunker / coalescer, and the 8x inflate guard.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ron_transport::limits::{
    encode_frame, Chunker, Codec, FrameDecoder, GuardedReader, InflateGuard, WriteCoalescer,
    FRAME_HEADER_LEN, INFLATE_RATIO_MAX, MAX_FRAME_CEILING,
};
use ron_transport::TransportError;

/// Observes allocations made by the current thread while armed, so the tests can assert what
/// `FrameDecoder::decode` itself allocates (capacity alone cannot tell a fresh allocation from
/// reclaimed space of an earlier one).
struct Observing;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is exactly `System`'s; `note` only touches const-initialised
// thread-locals (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for Observing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded verbatim; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded verbatim; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded verbatim; `ptr` was allocated by `System` via this wrapper.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded verbatim; `ptr` was allocated by `System` via this wrapper.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Observing = Observing;

/// Runs `f` and returns (its result, allocations made, largest allocation) on this thread.
fn observe<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    ALLOCS.with(|c| c.set(0));
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, ALLOCS.with(Cell::get), LARGEST.with(Cell::get))
}

/// `bytes` allocates a small fixed header (`Shared`, 40 bytes on 64-bit) the first time a
/// vector-backed `BytesMut` is split; that is bookkeeping, not buffer memory.
const BOOKKEEPING: usize = 64;

/// Cuts `data` at the given (sorted, deduplicated, in-range) points.
fn split_at_points(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut last = 0;
    for c in cuts {
        pieces.push(data[last..c].to_vec());
        last = c;
    }
    pieces.push(data[last..].to_vec());
    pieces
}

/// Feeds pieces one at a time, draining every complete frame after each piece.
/// Checks the allocation discipline on every call: `decode` allocates at most once, exactly
/// one frame (`4 + len ≤ 4 + max`), and nothing at all when it refuses.
fn feed(
    d: &mut FrameDecoder,
    pieces: &[Vec<u8>],
    max: u64,
) -> (Vec<Bytes>, Option<TransportError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for p in pieces {
        buf.extend_from_slice(p);
        loop {
            let cap_before = buf.capacity();
            let (r, allocs, largest) = observe(|| d.decode(&mut buf));
            assert!(allocs <= 1, "{allocs} allocations in one decode");
            assert!(
                largest <= (FRAME_HEADER_LEN + max as usize).max(BOOKKEEPING),
                "allocated {largest} > 4 + {max}"
            );
            match r {
                Ok(Some(f)) => {
                    assert!(f.len() as u64 <= max);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(allocs, 0, "no allocation on refusal");
                    assert_eq!(buf.capacity(), cap_before, "no growth on refusal");
                    return (frames, Some(e));
                }
            }
        }
    }
    (frames, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any split of a stream of valid frames decodes to the same frames.
    #[test]
    fn any_split_decodes_same_frames(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut stream = BytesMut::new();
        for p in &payloads {
            encode_frame(&mut stream, p, 4096).unwrap();
        }
        let pieces = split_at_points(&stream, &cuts);
        let mut d = FrameDecoder::new(4096);
        let (frames, err) = feed(&mut d, &pieces, 4096);
        prop_assert!(err.is_none());
        let got: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
        prop_assert_eq!(got, payloads);
    }

    /// An announced length above the ceiling is refused as soon as the header is complete,
    /// whatever the split, and the buffer never grows for it.
    #[test]
    fn over_long_rejected_before_allocation(
        max in 0u64..=MAX_FRAME_CEILING,
        excess in 1u64..=u64::from(u32::MAX),
        body in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let len = (max + excess).min(u64::from(u32::MAX));
        prop_assume!(len > max);
        let mut stream = (len as u32).to_be_bytes().to_vec();
        stream.extend_from_slice(&body);
        let pieces = split_at_points(&stream, &cuts);
        let mut d = FrameDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut fed = 0usize;
        let mut refused = false;
        for p in &pieces {
            buf.extend_from_slice(p);
            fed += p.len();
            let cap = buf.capacity();
            let (r, allocs, _) = observe(|| d.decode(&mut buf));
            match r {
                Ok(Some(_)) => prop_assert!(false, "no frame may come out"),
                Ok(None) => prop_assert!(fed < FRAME_HEADER_LEN, "refused at the 4th byte"),
                Err(TransportError::TooLarge { len: l, max: m }) => {
                    prop_assert_eq!(l, len);
                    prop_assert_eq!(m, max);
                    prop_assert_eq!(buf.capacity(), cap);
                    prop_assert_eq!(allocs, 0);
                    refused = true;
                    break;
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }
        prop_assert!(refused);
    }

    /// Arbitrary bytes under an arbitrary ceiling: never a frame above it, never a panic,
    /// never an allocation above header + max.
    #[test]
    fn adversarial_bytes(
        max in prop_oneof![0u64..=64, 0u64..=70_000],
        data in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let pieces = split_at_points(&data, &cuts);
        let mut d = FrameDecoder::new(max);
        let _ = feed(&mut d, &pieces, max);
    }

    /// Chunker: concatenation equals input, every chunk ≤ size, all but the last exactly size.
    #[test]
    fn chunker_props(data in prop::collection::vec(any::<u8>(), 0..20_000), size in 1usize..5000) {
        let input = Bytes::from(data);
        let chunks: Vec<Bytes> = Chunker::new(size).chunks(input.clone()).collect();
        let mut cat = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            prop_assert!(!c.is_empty() && c.len() <= size);
            if i + 1 < chunks.len() {
                prop_assert_eq!(c.len(), size);
            }
            cat.extend_from_slice(c);
        }
        prop_assert_eq!(&cat[..], &input[..]);
    }

    /// Coalescer: the chunk stream is exactly the encoded frames; every chunk ≤ size.
    #[test]
    fn coalescer_props(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..9000), 0..10),
        size in 1usize..4096,
        drain_every in 1usize..4,
    ) {
        let mut w = WriteCoalescer::new(size);
        let mut want = BytesMut::new();
        let mut got = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            encode_frame(&mut want, p, MAX_FRAME_CEILING).unwrap();
            w.push_frame(Bytes::from(p.clone()), MAX_FRAME_CEILING).unwrap();
            if i % drain_every == 0 {
                while let Some(c) = w.next_chunk() {
                    prop_assert!(!c.is_empty() && c.len() <= size);
                    got.extend_from_slice(&c);
                }
            }
        }
        while let Some(c) = w.next_chunk() {
            prop_assert!(!c.is_empty() && c.len() <= size);
            got.extend_from_slice(&c);
        }
        prop_assert!(w.is_empty());
        prop_assert_eq!(&got[..], &want[..]);
    }

    /// flate2 behind the guard, on arbitrary "compressed" bytes: output ≤ 8 × input, always.
    #[test]
    fn inflate_arbitrary_input_never_exceeds_8x(
        data in prop::collection::vec(any::<u8>(), 0..512),
        raw in any::<bool>(),
    ) {
        let g = InflateGuard::new(MAX_FRAME_CEILING);
        let codec = if raw { Codec::RawDeflate } else { Codec::Zlib };
        if let Ok(out) = g.inflate(&data, codec) {
            prop_assert!(out.len() as u64 <= INFLATE_RATIO_MAX * data.len() as u64);
        }
    }

    /// Real streams: accepted iff the original fits the budget, and then byte-exact.
    #[test]
    fn inflate_real_streams(
        noise in prop::collection::vec(any::<u8>(), 0..200),
        zeros in 0usize..20_000,
    ) {
        use std::io::Write;
        let mut data = noise;
        data.resize(data.len() + zeros, 0);
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&data).unwrap();
        let c = e.finish().unwrap();
        let g = InflateGuard::new(MAX_FRAME_CEILING);
        match g.inflate(&c, Codec::Zlib) {
            Ok(out) => {
                prop_assert!(data.len() as u64 <= g.budget(c.len()));
                prop_assert_eq!(&out[..], &data[..]);
            }
            Err(TransportError::TooLarge { len, max }) => {
                prop_assert!(data.len() as u64 > g.budget(c.len()));
                prop_assert_eq!(max, g.budget(c.len()));
                prop_assert_eq!(len, max + 1);
            }
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    /// Codec-independent: any reader, any output length, any read sizes — the guard never
    /// yields more than 8 × the compressed length.
    #[test]
    fn guarded_reader_never_exceeds_8x(
        compressed_len in 0usize..2000,
        produced in 0u64..40_000,
        byte in any::<u8>(),
        read_sizes in prop::collection::vec(1usize..5000, 1..20),
    ) {
        let g = InflateGuard::new(MAX_FRAME_CEILING);
        let mut r = GuardedReader::new(io::repeat(byte).take(produced), &g, compressed_len);
        let budget = INFLATE_RATIO_MAX * compressed_len as u64;
        let mut total = 0u64;
        let mut buf = vec![0u8; 5000];
        let mut i = 0;
        let outcome = loop {
            let n = read_sizes[i % read_sizes.len()];
            i += 1;
            match r.read(&mut buf[..n]) {
                Ok(0) => break Ok(()),
                Ok(k) => {
                    total += k as u64;
                    prop_assert!(total <= budget);
                }
                Err(e) => break Err(e),
            }
        };
        prop_assert!(total <= budget);
        prop_assert_eq!(outcome.is_ok(), produced <= budget);
        prop_assert_eq!(total, produced.min(budget));
    }
}

/// The allocation observer works, and a partial body costs exactly one `4 + len` allocation.
#[test]
fn observer_sees_decode_allocation() {
    let (v, allocs, largest) = observe(|| Vec::<u8>::with_capacity(100));
    drop(v);
    assert_eq!((allocs, largest), (1, 100));
    let mut d = FrameDecoder::new(MAX_FRAME_CEILING);
    let mut buf = BytesMut::from(&(70_000u32).to_be_bytes()[..]);
    let (r, allocs, largest) = observe(|| d.decode(&mut buf));
    assert!(r.unwrap().is_none());
    assert_eq!((allocs, largest), (1, 70_004));
}
