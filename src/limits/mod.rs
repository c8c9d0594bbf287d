//! Size limits on the I/O path (spec/IDB I-8, I-8b): the length-prefixed frame codec that
//! refuses an over-long length before allocating, the write chunker, and the 8x inflate guard.
//! Pure, clock-free and I/O-free: engines feed bytes in and take frames out.

pub mod chunker;
pub mod frame;
pub mod inflate;

pub use chunker::{Chunker, WriteCoalescer};
pub use frame::{encode_frame, frame_header, FrameDecoder, FRAME_HEADER_LEN, MAX_FRAME_CEILING};
pub use inflate::{Codec, GuardedReader, InflateGuard, InflateLimitExceeded, INFLATE_RATIO_MAX};
