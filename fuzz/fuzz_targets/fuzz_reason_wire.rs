//! Fuzz target `fuzz_reason_wire` (spec/TESTS.md §1.4): arbitrary constructions of
//! `TransportError` values (every variant, arbitrary field contents) ⇒ `kind()` is always one of
//! the canonical kinds, `reject_reason()` is always one of `RejectReason::ALL` with the same
//! string as `kind()`, and formatting never panics.
#![no_main]

use std::io;
use std::path::PathBuf;

use ron_transport::{ConfigError, RejectReason, TimeoutOp, TransportError};

/// The canonical `kind()` set (spec/IDB I-13).
const KINDS: [&str; 12] = [
    "timeout",
    "peer_limit",
    "rate_limited",
    "too_large",
    "tls",
    "arti_bootstrap",
    "io_closed",
    "busy",
    "cancelled",
    "config",
    "unsupported",
    "io",
];

/// The canonical `rejected_total{reason}` set (spec/OBSERVABILITY §1.1).
const REASONS: [&str; 7] = [
    "timeout",
    "tls",
    "too_large",
    "rate_limited",
    "peer_limit",
    "arti_bootstrap",
    "busy",
];

const KEYS: [&str; 4] = [
    "max_conns",
    "limits.max_frame_bytes",
    "tls.cert_path",
    "pq.mode",
];

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |acc, _| (acc << 8) | u64::from(self.byte()))
    }
    fn string(&mut self) -> String {
        let n = usize::from(self.byte()).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
}

const IO_KINDS: [io::ErrorKind; 8] = [
    io::ErrorKind::ConnectionReset,
    io::ErrorKind::BrokenPipe,
    io::ErrorKind::UnexpectedEof,
    io::ErrorKind::TimedOut,
    io::ErrorKind::InvalidData,
    io::ErrorKind::WouldBlock,
    io::ErrorKind::PermissionDenied,
    io::ErrorKind::Other,
];

fn build(inp: &mut Input<'_>) -> TransportError {
    match inp.byte() % 13 {
        0 => TransportError::timeout(match inp.byte() % 6 {
            0 => TimeoutOp::Dial,
            1 => TimeoutOp::Handshake,
            2 => TimeoutOp::Read,
            3 => TimeoutOp::Write,
            4 => TimeoutOp::Idle,
            _ => TimeoutOp::Shutdown,
        }),
        1 => TransportError::PeerLimit,
        2 => TransportError::RateLimited,
        3 => TransportError::TooLarge {
            len: inp.u64(),
            max: inp.u64(),
        },
        4 => TransportError::Tls {
            detail: inp.string(),
        },
        5 => TransportError::ArtiBootstrap,
        6 => TransportError::IoClosed,
        7 => TransportError::Busy,
        8 => TransportError::Cancelled,
        9 => TransportError::Config(match inp.byte() % 4 {
            0 => ConfigError::Invalid {
                key: KEYS[usize::from(inp.byte()) % KEYS.len()],
                reason: inp.string(),
            },
            1 => ConfigError::Parse {
                key: inp.string(),
                value: inp.string(),
                reason: inp.string(),
            },
            2 => ConfigError::File {
                path: PathBuf::from(inp.string()),
                reason: inp.string(),
            },
            _ => ConfigError::UnknownKey {
                key: inp.string(),
                origin: inp.string(),
            },
        }),
        10 => TransportError::Unsupported { what: inp.string() },
        11 => TransportError::Io(io::Error::new(
            IO_KINDS[usize::from(inp.byte()) % IO_KINDS.len()],
            inp.string(),
        )),
        // Conversions the engines use.
        _ => match inp.byte() % 2 {
            0 => TransportError::from(io::Error::from(
                IO_KINDS[usize::from(inp.byte()) % IO_KINDS.len()],
            )),
            _ => TransportError::from(ConfigError::Invalid {
                key: KEYS[0],
                reason: inp.string(),
            }),
        },
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    while !inp.0.is_empty() {
        let err = build(&mut inp);
        let kind = err.kind();
        assert!(KINDS.contains(&kind), "non-canonical kind {kind}");
        if let Some(reason) = err.reject_reason() {
            assert!(RejectReason::ALL.contains(&reason));
            assert!(REASONS.contains(&reason.as_str()));
            assert_eq!(reason.as_str(), kind, "reason and kind agree");
            assert_eq!(reason.to_string(), reason.as_str());
        }
        let _ = err.to_string();
        let _ = format!("{err:?}");
    }
});
