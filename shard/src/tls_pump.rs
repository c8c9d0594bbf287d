//! The sans-IO TLS 1.3 pump: one [`TlsPump`] per connection drives a rustls 0.23 *unbuffered*
//! state machine (`UnbufferedServerConnection` / `UnbufferedClientConnection`) over buffers the
//! caller owns.
//!
//! Owns: feeding ciphertext to rustls one record at a time, yielding decrypted application data
//! as ranges of the caller's receive buffer, queueing handshake/ticket/alert bytes, encrypting
//! application data straight into a caller buffer, close_notify, and the handshake queries the
//! shard needs (negotiated group, ALPN, resumption). Also [`composite_provider`], the crypto
//! provider the pump recommends.
//!
//! Does not own: sockets, timers, buffers, metrics or policy. No I/O and no clock happen here;
//! the shard loop (`shard/`) moves the bytes and `src/` decides what they mean.
//!
//! rustls removed this unbuffered API on its main branch (to be replaced in 0.24); everything
//! that touches it stays in this module, behind the narrow method vocabulary of [`TlsPump`], so a
//! port touches nothing else.
//!
//! # After the handshake: the own record layer
//!
//! With `enable_secret_extraction` on the config (and TLS 1.3), the pump hands the connection
//! to [`crate::tls_record`] as soon as rustls holds nothing after the handshake (see
//! `kernel.rs`): every later record is sealed and opened in place by it, with no rustls copy,
//! and rustls keeps only what it must (`KernelConnection`: KeyUpdate secrets, tickets). The
//! method vocabulary does not change; [`TlsPump::seals_in_place`] tells which layer runs, and
//! [`TlsPump::seal_in_place`] seals a record around plaintext the caller wrote into its own
//! send buffer. The notes below are about the records rustls protects (the handshake, and
//! configs without secret extraction).
//!
//! # Copies per byte (rustls 0.23.46)
//!
//! - Receive: the kernel copies into the caller's receive buffer; rustls opens each record in
//!   place there; the pump yields that in-place plaintext as a range of the buffer (no copy by
//!   the pump once the first record of the connection has been verified, see below). rustls
//!   0.23 additionally copies each record's plaintext into an internal `Vec` (allocation + one
//!   copy that is thrown away); its public unbuffered API offers no way around that.
//! - Send: [`TlsPump::encrypt`] writes sealed records straight into the caller's buffer, but
//!   inside rustls 0.23 that is two copies: plaintext into a fresh `Vec` (sealed in place there),
//!   then the sealed record into the caller's buffer. The interface is shaped for one pass, so
//!   a later rustls (or an own record layer) can get there without changing callers.
//! - Handshake, ticket and alert bytes are copied once more, from the pump's queue into the
//!   buffer given to [`TlsPump::poll_transmit`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod kernel;
mod provider;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{ClientConfig, CommonState, HandshakeKind, NamedGroup, ProtocolVersion, ServerConfig};

pub use error::PumpError;
use kernel::{HandshakeInfo, KernelSide, KernelTls};
pub use provider::composite_provider;

/// A TLS connection driven without I/O: bytes in, bytes out, plaintext as ranges of the caller's
/// receive buffer.
///
/// # Call order
///
/// 1. Create it with [`TlsPump::server`] or [`TlsPump::client`]. A client queues its
///    ClientHello at once, so [`wants_write`](Self::wants_write) is true.
/// 2. Whenever [`wants_write`](Self::wants_write) is true, call
///    [`poll_transmit`](Self::poll_transmit) and send what it wrote, in order, before any bytes
///    from a later [`encrypt`](Self::encrypt) (encrypt also puts still-pending bytes first, so
///    this holds even if the caller forgets).
/// 3. When ciphertext arrives, append it to the receive buffer and call
///    [`handle_ciphertext`](Self::handle_ciphertext) with the *whole* unconsumed buffer. For each
///    returned [`Progress`]: read `plaintext` (a range of that buffer), then drop
///    `discard` bytes from the front of the buffer, then, if the status is
///    [`Status::CallAgain`], call again. Bytes not discarded must be passed again, unchanged
///    and at the front, on the next call (rustls may refer to them); new ciphertext goes after
///    them. Then go to 2.
/// 4. Once the handshake is done ([`is_handshaking`](Self::is_handshaking) false, or
///    `Progress::handshake_completed`), [`encrypt`](Self::encrypt) seals application data
///    straight into a caller buffer (for example a registered send buffer).
/// 5. [`queue_close_notify`](Self::queue_close_notify) ends the sending side; send what
///    `poll_transmit` yields. [`Status::PeerClosed`] says the peer ended its side;
///    [`Status::Closed`] that both did.
///
/// A fatal error (see [`PumpError::is_fatal`]) fails the pump: later calls return it again, and
/// `poll_transmit` still yields the alert rustls queued for the peer.
///
/// Nothing a peer sends can make the pump panic; it only returns [`PumpError`]s.
pub struct TlsPump {
    conn: Conn,
    st: Inner,
    /// The config allows secret extraction: hand the connection to the own record layer once
    /// the handshake is done.
    hand_off: bool,
    /// Records per sending key asked for with [`TlsPump::set_key_update_interval`].
    rekey_every: Option<u64>,
}

/// What one [`TlsPump::handle_ciphertext`] call did.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Bytes to drop from the front of the receive buffer once `plaintext` has been read, before
    /// the next `handle_ciphertext` call.
    pub discard: usize,
    /// Decrypted application data of at most one record, as a range of the buffer passed to
    /// `handle_ciphertext` (empty when there is none). It lies inside the `discard` prefix.
    pub plaintext: Range<usize>,
    /// What to do next.
    pub status: Status,
    /// True in exactly one `Progress` per connection: the first one after the handshake
    /// finished (negotiated group, ALPN and resumption can be read from then on).
    pub handshake_completed: bool,
}

impl Progress {
    /// The plaintext bytes, given the same buffer that was passed to `handle_ciphertext`.
    pub fn plaintext<'a>(&self, incoming: &'a [u8]) -> &'a [u8] {
        &incoming[self.plaintext.clone()]
    }
}

/// The pump's state after a [`TlsPump::handle_ciphertext`] call.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A record was decrypted; more complete records may be buffered: consume `plaintext`,
    /// discard, and call `handle_ciphertext` again.
    CallAgain,
    /// Every complete record was processed; read more ciphertext from the peer.
    NeedsInput,
    /// The peer sent close_notify: no more plaintext will come; later ciphertext is ignored
    /// (`discard` covers the whole buffer). Sending is still allowed until [`TlsPump::queue_close_notify`].
    PeerClosed,
    /// Both sides sent close_notify. Terminal; input is ignored (`discard` covers it).
    Closed,
}

/// Which end of the connection a pump is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Accepted connection (`UnbufferedServerConnection`).
    Server,
    /// Dialed connection (`UnbufferedClientConnection`).
    Client,
}

/// Counters for one pump, for tests, benches and debugging (the shard may export them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PumpStats {
    /// rustls state transitions (`process_tls_records` calls) so far.
    pub transitions: u64,
    /// Application-data records yielded in place (no copy by the pump).
    pub records_in_place: u64,
    /// Application-data records the pump had to copy into the buffer (see the module notes on
    /// in-place verification).
    pub records_copied: u64,
    /// Application-data records sealed by the own record layer.
    pub records_sealed: u64,
    /// KeyUpdates sent (on request of the peer, on [`TlsPump::queue_key_update`], or before
    /// the confidentiality limit).
    pub key_updates_sent: u64,
    /// KeyUpdates received.
    pub key_updates_received: u64,
}

impl TlsPump {
    /// A server-side pump for one accepted connection.
    ///
    /// With `config.enable_secret_extraction` set, the connection moves to the own record layer
    /// ([`crate::tls_record`]) once the handshake is done (TLS 1.3 only); otherwise rustls
    /// protects every record.
    pub fn server(config: Arc<ServerConfig>) -> Result<Self, PumpError> {
        let hand_off = config.enable_secret_extraction;
        let conn = UnbufferedServerConnection::new(config)?;
        Ok(Self::start(Conn::Server(Box::new(conn)), hand_off))
    }

    /// A client-side pump dialing `name`; the ClientHello is queued at once
    /// ([`wants_write`](Self::wants_write) is true).
    ///
    /// The record layer is chosen as for [`server`](Self::server).
    pub fn client(config: Arc<ClientConfig>, name: ServerName<'static>) -> Result<Self, PumpError> {
        let hand_off = config.enable_secret_extraction;
        let conn = UnbufferedClientConnection::new(config, name)?;
        Ok(Self::start(Conn::Client(Box::new(conn)), hand_off))
    }

    fn start(conn: Conn, hand_off: bool) -> Self {
        let mut pump = Self {
            conn,
            st: Inner::default(),
            hand_off,
            rekey_every: None,
        };
        // Runs rustls once with no input: a client queues its ClientHello, a server does
        // nothing. Errors are kept in the pump and returned by the next call.
        let _ = pump.handle_ciphertext(&mut []);
        pump
    }

    /// Processes ciphertext: decrypts application data in place and yields it as a range of
    /// `incoming`, queues handshake replies for [`poll_transmit`](Self::poll_transmit).
    ///
    /// `incoming` is the whole unconsumed receive buffer: the bytes left by the previous call
    /// (not discarded), followed by new ciphertext. See the type docs for the call order.
    pub fn handle_ciphertext(&mut self, incoming: &mut [u8]) -> Result<Progress, PumpError> {
        let r = match &mut self.conn {
            Conn::Kernel(k) => return k.handle(&mut self.st, incoming),
            Conn::Server(c) => handle(&mut **c, &mut self.st, incoming),
            Conn::Client(c) => handle(&mut **c, &mut self.st, incoming),
            Conn::Gone => Err(self.st.fail(PumpError::Internal("hand_off_failed"))),
        };
        if r.is_ok() {
            self.hand_off();
        }
        r
    }

    /// Moves a finished TLS 1.3 handshake to the own record layer: rustls hands over the
    /// traffic secrets and sequence numbers, and keeps only its post-handshake half. Done at
    /// the first moment rustls holds nothing: no retained handshake bytes, nothing buffered to
    /// send (the pump's transmit queue is its own and goes out first, in order).
    fn hand_off(&mut self) {
        let st = &self.st;
        if !self.hand_off
            || !st.handshake_done
            || st.retained > 0
            || st.failed.is_some()
            || st.peer_closed
            || st.close_queued
            || st.closed
            || matches!(self.conn, Conn::Kernel(_) | Conn::Gone)
        {
            return;
        }
        let Some(common) = self.common() else { return };
        if common.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
            self.hand_off = false;
            return;
        }
        let info = HandshakeInfo::capture(common);
        let done = match std::mem::replace(&mut self.conn, Conn::Gone) {
            Conn::Server(c) => c
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, KernelSide::Server(k))),
            Conn::Client(c) => c
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, KernelSide::Client(k))),
            other => {
                self.conn = other;
                return;
            }
        };
        let kernel = done
            .map_err(PumpError::from)
            .and_then(|(secrets, side)| KernelTls::new(side, secrets, info));
        match kernel {
            Ok(mut k) => {
                if let Some(n) = self.rekey_every {
                    k.set_rekey_every(n);
                }
                self.conn = Conn::Kernel(Box::new(k));
            }
            Err(e) => {
                self.st.fail(e);
            }
        }
    }

    /// Copies queued handshake, ticket and alert bytes into `out`; returns how many (0 when
    /// nothing is pending). Partial writes are fine: the rest stays queued.
    ///
    /// Still yields bytes after a fatal error (the alert for the peer).
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Result<usize, PumpError> {
        let pending = &self.st.tx[self.st.tx_head..];
        let n = pending.len().min(out.len());
        out[..n].copy_from_slice(&pending[..n]);
        self.st.tx_head += n;
        if self.st.tx_head == self.st.tx.len() {
            self.st.tx_head = 0;
            if self.st.tx.capacity() > IDLE_TX_CAPACITY {
                // Handshake flights are large and rare; don't keep them per connection.
                self.st.tx = Vec::new();
            } else {
                self.st.tx.clear();
            }
        }
        Ok(n)
    }

    /// Encrypts `plaintext` (any length; split into records of at most 16 KiB) straight into
    /// `out`; returns the number of bytes written, all of which must be sent.
    ///
    /// Bytes still pending for [`poll_transmit`](Self::poll_transmit) are written first, so the
    /// peer sees records in order. If `out` is too small, returns
    /// [`PumpError::InsufficientSize`] and leaves `out` untouched.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, PumpError> {
        match &mut self.conn {
            Conn::Kernel(k) => {
                self.st.check_send()?;
                k.encrypt(&mut self.st, plaintext, out)
            }
            Conn::Server(c) => encrypt(&mut **c, &mut self.st, plaintext, out),
            Conn::Client(c) => encrypt(&mut **c, &mut self.st, plaintext, out),
            Conn::Gone => Err(PumpError::Internal("hand_off_failed")),
        }
    }

    /// The connection runs on the own record layer, so [`seal_in_place`](Self::seal_in_place)
    /// and [`queue_key_update`](Self::queue_key_update) are available (false during the
    /// handshake, and for configs without `enable_secret_extraction` or TLS 1.2).
    pub fn seals_in_place(&self) -> bool {
        matches!(self.conn, Conn::Kernel(_))
    }

    /// The AEAD of the own record layer, once the connection runs on it.
    pub fn record_aead(&self) -> Option<crate::tls_record::AeadAlgorithm> {
        match &self.conn {
            Conn::Kernel(k) => Some(k.algorithm()),
            _ => None,
        }
    }

    /// Seals one application-data record in place, around plaintext the caller already wrote
    /// into its send buffer: `record` holds [`HEADER_LEN`](crate::tls_record::HEADER_LEN) bytes
    /// of room, then the `plain_len` bytes of plaintext (at most 16 KiB), then at least 17 bytes
    /// of room. Returns the record's length, `plain_len +`
    /// [`SEAL_OVERHEAD`](crate::tls_record::SEAL_OVERHEAD).
    ///
    /// Records sealed here must be sent after what [`poll_transmit`](Self::poll_transmit) has
    /// yielded so far and before what it yields next; call
    /// [`reserve_records`](Self::reserve_records) before polling for a batch. Returns
    /// [`PumpError::Internal`] unless [`seals_in_place`](Self::seals_in_place).
    pub fn seal_in_place(
        &mut self,
        record: &mut [u8],
        plain_len: usize,
    ) -> Result<usize, PumpError> {
        self.st.check_send()?;
        match &mut self.conn {
            Conn::Kernel(k) => k.seal_app_data(&mut self.st, record, plain_len),
            _ => Err(PumpError::Internal("seal_in_place_before_hand_off")),
        }
    }

    /// Announces that up to `records` records will be sealed with
    /// [`seal_in_place`](Self::seal_in_place) before the next `poll_transmit`; if that would
    /// pass the point where the sending key must change, a KeyUpdate is queued now (so
    /// `wants_write` turns true). A no-op before the hand-off.
    pub fn reserve_records(&mut self, records: u64) -> Result<(), PumpError> {
        match &mut self.conn {
            Conn::Kernel(k) if self.st.failed.is_none() && !self.st.close_queued => {
                k.reserve(&mut self.st, records)
            }
            _ => Ok(()),
        }
    }

    /// Queues a KeyUpdate (read it with [`poll_transmit`](Self::poll_transmit)) and switches
    /// to the next sending key; with `request_peer` the peer is asked to update its key too.
    /// Available once [`seals_in_place`](Self::seals_in_place).
    pub fn queue_key_update(&mut self, request_peer: bool) -> Result<(), PumpError> {
        self.st.check_send()?;
        if self.is_handshaking() {
            return Err(PumpError::HandshakeNotComplete);
        }
        match &mut self.conn {
            Conn::Kernel(k) => k.queue_key_update(&mut self.st, request_peer),
            _ => Err(PumpError::Internal("key_update_before_hand_off")),
        }
    }

    /// Sends a KeyUpdate every `records` records (at least 1; at most the suite's
    /// confidentiality limit less a margin of 2^16, which is the default: 2^24 − 2^16 for
    /// AES-GCM). Meant for tests and for operators who want keys rotated more often.
    pub fn set_key_update_interval(&mut self, records: u64) {
        self.rekey_every = Some(records);
        if let Conn::Kernel(k) = &mut self.conn {
            k.set_rekey_every(records);
        }
    }

    /// Queues a close_notify alert (read it with [`poll_transmit`](Self::poll_transmit)); after
    /// it, [`encrypt`](Self::encrypt) returns [`PumpError::Closed`]. Idempotent.
    ///
    /// Returns [`PumpError::HandshakeNotComplete`] during the handshake (just drop the
    /// connection then).
    pub fn queue_close_notify(&mut self) -> Result<(), PumpError> {
        match &mut self.conn {
            Conn::Kernel(k) => {
                if let Some(e) = &self.st.failed {
                    return Err(e.clone());
                }
                if self.st.close_queued || self.st.closed {
                    return Ok(());
                }
                k.close(&mut self.st)
            }
            Conn::Server(c) => close(&mut **c, &mut self.st),
            Conn::Client(c) => close(&mut **c, &mut self.st),
            Conn::Gone => Err(PumpError::Internal("hand_off_failed")),
        }
    }

    /// Bytes are waiting for [`poll_transmit`](Self::poll_transmit).
    pub fn wants_write(&self) -> bool {
        self.st.tx_head < self.st.tx.len()
    }

    /// The handshake has not finished yet.
    pub fn is_handshaking(&self) -> bool {
        self.common().is_some_and(|c| c.is_handshaking())
    }

    /// Server or client.
    pub fn side(&self) -> Side {
        match &self.conn {
            Conn::Server(_) => Side::Server,
            Conn::Client(_) | Conn::Gone => Side::Client,
            Conn::Kernel(k) => k.side(),
        }
    }

    /// The key exchange group the handshake used (known once the ServerHello is processed).
    pub fn negotiated_group(&self) -> Option<NamedGroup> {
        match self.info() {
            Some(i) => i.group,
            None => self
                .common()?
                .negotiated_key_exchange_group()
                .map(|g| g.name()),
        }
    }

    /// The handshake used a hybrid post-quantum group (X25519MLKEM768 or SecP256r1MLKEM768).
    pub fn is_hybrid_pq(&self) -> bool {
        matches!(
            self.negotiated_group(),
            Some(NamedGroup::X25519MLKEM768 | NamedGroup::secp256r1MLKEM768)
        )
    }

    /// The ALPN protocol both sides agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self.info() {
            Some(i) => i.alpn.as_deref(),
            None => self.common()?.alpn_protocol(),
        }
    }

    /// Full, full with HelloRetryRequest, or resumed; `None` during the handshake.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        match self.info() {
            Some(i) => i.kind,
            None => self.common()?.handshake_kind(),
        }
    }

    /// The handshake resumed an earlier session (ticket/PSK).
    pub fn is_resumed(&self) -> bool {
        self.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// The negotiated cipher suite.
    pub fn cipher_suite(&self) -> Option<rustls::CipherSuite> {
        match self.info() {
            Some(i) => i.suite,
            None => self.common()?.negotiated_cipher_suite().map(|s| s.suite()),
        }
    }

    /// The negotiated protocol version (TLS 1.3 unless the config also allows 1.2).
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        match self.info() {
            Some(i) => i.version,
            None => self.common()?.protocol_version(),
        }
    }

    /// The peer's certificate chain, end entity first (for caller-side pinning hooks).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self.info() {
            Some(i) => i.peer_certificates.as_deref(),
            None => self.common()?.peer_certificates(),
        }
    }

    /// The peer sent close_notify.
    pub fn is_peer_closed(&self) -> bool {
        self.st.peer_closed
    }

    /// Both sides closed, or the pump failed.
    pub fn is_closed(&self) -> bool {
        self.st.closed || self.st.failed.is_some()
    }

    /// Counters (state transitions, in-place vs copied records).
    pub fn stats(&self) -> PumpStats {
        self.st.stats
    }

    /// What the handshake negotiated, once the connection runs on the own record layer.
    fn info(&self) -> Option<&HandshakeInfo> {
        match &self.conn {
            Conn::Kernel(k) => Some(&k.info),
            _ => None,
        }
    }

    /// rustls's state, while rustls runs the connection.
    fn common(&self) -> Option<&CommonState> {
        match &self.conn {
            Conn::Server(c) => Some(c.common()),
            Conn::Client(c) => Some(c.common()),
            Conn::Kernel(_) | Conn::Gone => None,
        }
    }
}

impl fmt::Debug for TlsPump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPump")
            .field("side", &self.side())
            .field("handshaking", &self.is_handshaking())
            .field("pending_tx", &(self.st.tx.len() - self.st.tx_head))
            .field("retained", &self.st.retained)
            .field("peer_closed", &self.st.peer_closed)
            .field("close_queued", &self.st.close_queued)
            .field("closed", &self.st.closed)
            .field("failed", &self.st.failed)
            .field("stats", &self.st.stats)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Implementation.
//
// Receive path. rustls decrypts each record in place in the buffer it is given and (in 0.23)
// also copies the plaintext into an internal Vec, which `ReadTraffic` hands out while it holds
// the exclusive borrow of the buffer. The pump feeds rustls exactly one new record per step, so
// when a step yields application data the pump knows where that record starts; for TLS 1.3 the
// plaintext then sits at `record_start + 5 .. + len` of the caller's buffer. The first record
// of each connection is verified against rustls's copy; from then on it is yielded in place
// (zero copies by the pump). If verification fails or the layout is not TLS 1.3, the pump copies
// rustls's plaintext into the consumed part of the buffer instead, so the result is always right.
//
// Handshake state across calls. While a handshake message spans records, rustls keeps offsets
// into the caller's buffer (the undiscarded prefix, `retained` bytes). Every rustls call must
// see those bytes at the same offsets, so calls made without the caller's buffer (encrypt,
// close) pass a copy of them (`shadow`, only kept while `retained > 0`, which is rare), or an
// empty buffer otherwise.

/// TLS record header: type (1), version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;
/// Outer content type of TLS 1.3 protected records.
const CONTENT_TYPE_APPLICATION_DATA: u8 = 23;
/// Inner content type byte plus the smallest AEAD tag of the TLS 1.3 suites.
const MIN_TLS13_RECORD_OVERHEAD: usize = 1 + 16;
/// Capacity of the transmit queue kept once it drains (enough for tickets and alerts).
const IDLE_TX_CAPACITY: usize = 1024;
/// Upper bound on rustls state transitions while processing one record; far above what a
/// handshake flight plus tickets needs, it only turns a rustls livelock into an error.
const MAX_TRANSITIONS_PER_STEP: usize = 1024;

/// rustls steps over complete records a handshake may take before the pump refuses it as
/// [`PumpError::HandshakeFragmented`]. A full handshake (with tickets, client certificates,
/// HelloRetryRequest) takes a few dozen; each fragment record of a handshake message costs
/// about two, and every call re-walks the fragments retained so far, so this also bounds that
/// quadratic work (to well under a millisecond). Bytes of one record arriving separately do
/// not count.
pub const MAX_HANDSHAKE_TRANSITIONS: u64 = 1024;

enum Conn {
    Server(Box<UnbufferedServerConnection>),
    Client(Box<UnbufferedClientConnection>),
    /// After the handshake, on the own record layer.
    Kernel(Box<KernelTls>),
    /// rustls's connection was consumed by a hand-off that failed (the pump is failed).
    Gone,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum InPlace {
    /// No record checked yet on this connection.
    #[default]
    Unverified,
    /// rustls's plaintext matched the in-place bytes: yield in place.
    Verified,
    /// It did not (or the layout is unknown): copy.
    Copy,
}

#[derive(Default)]
struct Inner {
    /// Bytes for `poll_transmit`: `tx[tx_head..]`.
    tx: Vec<u8>,
    tx_head: usize,
    /// Front bytes of the caller's buffer that rustls processed but still refers to.
    retained: usize,
    /// Copy of those bytes, valid while `retained > 0`.
    shadow: Vec<u8>,
    /// rustls's plaintext, when it must be checked or copied.
    spill: Vec<u8>,
    failed: Option<PumpError>,
    handshake_done: bool,
    handshake_edge: bool,
    /// rustls steps over complete records before the handshake completed.
    handshake_record_steps: u64,
    peer_closed: bool,
    close_queued: bool,
    closed: bool,
    in_place: InPlace,
    stats: PumpStats,
}

impl Inner {
    /// The checks every send makes first: failed, closed.
    fn check_send(&self) -> Result<(), PumpError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.close_queued || self.closed {
            return Err(PumpError::Closed);
        }
        Ok(())
    }

    fn fail(&mut self, e: PumpError) -> PumpError {
        if e.is_fatal() && self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    fn progress(&mut self, discard: usize, plaintext: Range<usize>, status: Status) -> Progress {
        Progress {
            discard,
            plaintext,
            status,
            handshake_completed: std::mem::take(&mut self.handshake_edge),
        }
    }

    /// Records that rustls processed `incoming[..processed_end]` and may still refer to the
    /// part after `base` (the discard point).
    fn set_retained(&mut self, incoming: &[u8], base: usize, processed_end: usize) {
        self.retained = processed_end.saturating_sub(base);
        self.shadow.clear();
        if self.retained > 0 {
            self.shadow
                .extend_from_slice(&incoming[base..base + self.retained]);
        }
    }

    fn note_handshake(&mut self, common: &CommonState) {
        if !self.handshake_done && !common.is_handshaking() {
            self.handshake_done = true;
            self.handshake_edge = true;
        }
    }
}

/// The two rustls connection types behind one generic driver.
trait Driver {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &CommonState;
}

impl Driver for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
}

impl Driver for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &CommonState {
        self
    }
}

/// A complete record at the front of `buf`: (content type, payload length).
fn complete_record(buf: &[u8]) -> Option<(u8, usize)> {
    let header = buf.get(..RECORD_HEADER_LEN)?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    (buf.len() >= RECORD_HEADER_LEN + len).then_some((header[0], len))
}

fn handle<C: Driver>(
    conn: &mut C,
    st: &mut Inner,
    incoming: &mut [u8],
) -> Result<Progress, PumpError> {
    if let Some(e) = &st.failed {
        return Err(e.clone());
    }
    if st.closed {
        // Terminal: input is ignored, so all of it can go.
        return Ok(st.progress(incoming.len(), 0..0, Status::Closed));
    }
    if st.retained > incoming.len() {
        // The caller dropped bytes it was told to keep: rustls's offsets would be wrong.
        return Err(st.fail(PumpError::Internal("retained_bytes_missing")));
    }
    let mut base = 0usize;
    loop {
        let rec_start = base + st.retained;
        let record = complete_record(&incoming[rec_start..]);
        let limit = match record {
            Some((_, len)) => rec_start + RECORD_HEADER_LEN + len,
            None => incoming.len(),
        };
        let mut transitions = 0usize;
        loop {
            transitions += 1;
            if transitions > MAX_TRANSITIONS_PER_STEP {
                return Err(st.fail(PumpError::Internal("pump_stalled")));
            }
            st.stats.transitions += 1;
            if !st.handshake_done && record.is_some() {
                // A step over a complete record (steps waiting for more bytes of a record
                // split across receives do not count: TCP may deliver a byte at a time).
                st.handshake_record_steps += 1;
                if st.handshake_record_steps > MAX_HANDSHAKE_TRANSITIONS {
                    return Err(st.fail(PumpError::HandshakeFragmented));
                }
            }
            // Can this step's plaintext be yielded in place? Only for a TLS 1.3 application-data
            // record fed alone, with nothing retained before it.
            let in_place_layout = match record {
                Some((ty, len)) => {
                    ty == CONTENT_TYPE_APPLICATION_DATA
                        && base == rec_start
                        && conn.common().protocol_version() == Some(ProtocolVersion::TLSv1_3)
                        && st.in_place != InPlace::Copy
                        && len >= MIN_TLS13_RECORD_OVERHEAD
                }
                None => false,
            };
            let base_before = base;
            let UnbufferedStatus { discard, state } = conn.process(&mut incoming[base..limit]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    base += discard;
                    drain_alerts(conn, st, &mut incoming[base..limit]);
                    return Err(st.fail(e.into()));
                }
            };
            match state {
                ConnectionState::EncodeTlsData(mut enc) => {
                    let r = encode_into(&mut st.tx, &mut enc);
                    base += discard;
                    if let Err(e) = r {
                        return Err(st.fail(e));
                    }
                }
                ConnectionState::TransmitTlsData(t) => {
                    // The bytes are in `tx`, ahead of anything encrypted later: as good as sent.
                    t.done();
                    base += discard;
                }
                ConnectionState::ReadTraffic(mut rt) => {
                    // In-place candidates: yield without copying once verified; verify (spill a
                    // copy) the first time; copy otherwise.
                    let fits = |n: usize| match record {
                        Some((_, len)) => n + MIN_TLS13_RECORD_OVERHEAD <= len,
                        None => false,
                    };
                    let first_len = rt.peek_len().map_or(0, |n| n.get());
                    let zero_copy =
                        in_place_layout && st.in_place == InPlace::Verified && fits(first_len);
                    let verify =
                        in_place_layout && st.in_place == InPlace::Unverified && fits(first_len);
                    st.spill.clear();
                    let mut total = 0usize;
                    let mut records = 0usize;
                    let mut extra_discard = 0usize;
                    let mut failure = None;
                    while let Some(r) = rt.next_record() {
                        match r {
                            Ok(rec) => {
                                records += 1;
                                total += rec.payload.len();
                                extra_discard += rec.discard;
                                if !zero_copy {
                                    st.spill.extend_from_slice(rec.payload);
                                }
                            }
                            Err(e) => {
                                failure = Some(PumpError::from(e));
                                break;
                            }
                        }
                    }
                    drop(rt);
                    if let Some(e) = failure {
                        return Err(st.fail(e));
                    }
                    let end = base_before + discard + extra_discard;
                    base = end;
                    st.set_retained(incoming, base, base);
                    if end > limit || (zero_copy && (records != 1 || end != limit)) {
                        // rustls consumed more than it was given, or batched records the pump
                        // did not feed: never expected; refuse rather than yield wrong bytes.
                        return Err(st.fail(PumpError::Internal("unexpected_plaintext_layout")));
                    }
                    let at = rec_start + RECORD_HEADER_LEN;
                    let range = if zero_copy {
                        st.stats.records_in_place += 1;
                        at..at + total
                    } else if verify
                        && records == 1
                        && end == limit
                        && incoming[at..at + total] == st.spill[..]
                    {
                        st.in_place = InPlace::Verified;
                        st.stats.records_in_place += 1;
                        // Not needed again on this connection: give the memory back.
                        st.spill = Vec::new();
                        at..at + total
                    } else {
                        if verify {
                            st.in_place = InPlace::Copy;
                        }
                        // Copy into the tail of the consumed region (plaintext is never longer
                        // than the records it came from).
                        let Some(start) = end.checked_sub(total) else {
                            return Err(st.fail(PumpError::Internal("plaintext_exceeds_consumed")));
                        };
                        incoming[start..end].copy_from_slice(&st.spill);
                        st.stats.records_copied += 1;
                        start..end
                    };
                    st.note_handshake(conn.common());
                    return Ok(st.progress(base, range, Status::CallAgain));
                }
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                    base += discard;
                    break;
                }
                ConnectionState::PeerClosed => {
                    base += discard;
                    st.peer_closed = true;
                }
                ConnectionState::Closed => {
                    st.peer_closed = true;
                    st.closed = true;
                    st.set_retained(incoming, 0, 0);
                    st.note_handshake(conn.common());
                    return Ok(st.progress(incoming.len(), 0..0, Status::Closed));
                }
                ConnectionState::ReadEarlyData(_) => {
                    return Err(st.fail(PumpError::EarlyData));
                }
                _ => return Err(st.fail(PumpError::Internal("unknown_rustls_state"))),
            }
        }
        // rustls needs more input: the fed record (if complete) was processed.
        st.note_handshake(conn.common());
        if st.peer_closed {
            // rustls no longer reads input after close_notify (and cannot be mid handshake
            // message: an alert there is a protocol error), so all of it can go.
            st.set_retained(incoming, 0, 0);
            return Ok(st.progress(incoming.len(), 0..0, Status::PeerClosed));
        }
        match record {
            Some(_) => {
                // Continue with the next record; rustls may still refer to `base..limit`.
                st.retained = limit.saturating_sub(base);
            }
            None => {
                st.set_retained(incoming, base, rec_start);
                return Ok(st.progress(base, 0..0, Status::NeedsInput));
            }
        }
    }
}

fn encrypt<C: Driver>(
    conn: &mut C,
    st: &mut Inner,
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<usize, PumpError> {
    if let Some(e) = &st.failed {
        return Err(e.clone());
    }
    if st.close_queued || st.closed {
        return Err(PumpError::Closed);
    }
    if conn.common().is_handshaking() {
        return Err(PumpError::HandshakeNotComplete);
    }
    with_write_traffic(conn, st, |wt, st| {
        let pending = st.tx.len() - st.tx_head;
        if out.len() < pending {
            // Ask rustls for the record size without giving it room.
            let required = match wt.encrypt(plaintext, &mut []) {
                Ok(_) => 0,
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    required_size
                }
                Err(EncryptError::EncryptExhausted) => return Err(PumpError::EncryptExhausted),
            };
            return Err(PumpError::InsufficientSize {
                required: pending + required,
            });
        }
        let (head, tail) = out.split_at_mut(pending);
        match wt.encrypt(plaintext, tail) {
            Ok(n) => {
                head.copy_from_slice(&st.tx[st.tx_head..]);
                st.tx.clear();
                st.tx_head = 0;
                Ok(pending + n)
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                Err(PumpError::InsufficientSize {
                    required: pending + required_size,
                })
            }
            Err(EncryptError::EncryptExhausted) => Err(PumpError::EncryptExhausted),
        }
    })
}

fn close<C: Driver>(conn: &mut C, st: &mut Inner) -> Result<(), PumpError> {
    if let Some(e) = &st.failed {
        return Err(e.clone());
    }
    if st.close_queued || st.closed {
        return Ok(());
    }
    if conn.common().is_handshaking() {
        return Err(PumpError::HandshakeNotComplete);
    }
    with_write_traffic(conn, st, |wt, st| {
        let old = st.tx.len();
        let mut room = 64;
        for _ in 0..2 {
            st.tx.resize(old + room, 0);
            match wt.queue_close_notify(&mut st.tx[old..]) {
                Ok(n) => {
                    st.tx.truncate(old + n);
                    return Ok(());
                }
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    room = required_size;
                }
                Err(EncryptError::EncryptExhausted) => {
                    st.tx.truncate(old);
                    return Err(PumpError::EncryptExhausted);
                }
            }
        }
        st.tx.truncate(old);
        Err(PumpError::Internal("close_notify_size"))
    })?;
    st.close_queued = true;
    Ok(())
}

/// Drives rustls (without new input) to its `WriteTraffic` state and runs `f` in it.
fn with_write_traffic<C: Driver, R>(
    conn: &mut C,
    st: &mut Inner,
    f: impl FnOnce(&mut WriteTraffic<'_, C::Data>, &mut Inner) -> Result<R, PumpError>,
) -> Result<R, PumpError> {
    let mut shadow = std::mem::take(&mut st.shadow);
    let r = write_traffic_steps(conn, st, &mut shadow, f);
    st.shadow = shadow;
    r
}

fn write_traffic_steps<C: Driver, R>(
    conn: &mut C,
    st: &mut Inner,
    shadow: &mut [u8],
    f: impl FnOnce(&mut WriteTraffic<'_, C::Data>, &mut Inner) -> Result<R, PumpError>,
) -> Result<R, PumpError> {
    let mut empty = [0u8; 0];
    let mut f = Some(f);
    for _ in 0..MAX_TRANSITIONS_PER_STEP {
        st.stats.transitions += 1;
        // rustls must see the retained bytes at the same offsets; else no input at all.
        let view: &mut [u8] = if st.retained > 0 {
            &mut *shadow
        } else {
            &mut empty
        };
        let state = match conn.process(view).state {
            Ok(state) => state,
            Err(e) => {
                let view: &mut [u8] = if st.retained > 0 {
                    &mut *shadow
                } else {
                    &mut empty
                };
                drain_alerts(conn, st, view);
                return Err(st.fail(e.into()));
            }
        };
        match state {
            ConnectionState::WriteTraffic(mut wt) => {
                let Some(f) = f.take() else {
                    return Err(st.fail(PumpError::Internal("write_traffic_reentered")));
                };
                return f(&mut wt, st).map_err(|e| st.fail(e));
            }
            ConnectionState::EncodeTlsData(mut enc) => {
                if let Err(e) = encode_into(&mut st.tx, &mut enc) {
                    return Err(st.fail(e));
                }
            }
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::BlockedHandshake => return Err(PumpError::HandshakeNotComplete),
            ConnectionState::PeerClosed => st.peer_closed = true,
            ConnectionState::Closed => {
                st.closed = true;
                return Err(PumpError::Closed);
            }
            ConnectionState::ReadTraffic(_) => {
                return Err(st.fail(PumpError::Internal("unread_plaintext")));
            }
            ConnectionState::ReadEarlyData(_) => return Err(st.fail(PumpError::EarlyData)),
            _ => return Err(st.fail(PumpError::Internal("unknown_rustls_state"))),
        }
    }
    Err(st.fail(PumpError::Internal("pump_stalled")))
}

/// Appends one handshake/alert chunk from rustls to `tx`.
fn encode_into<Data>(tx: &mut Vec<u8>, enc: &mut EncodeTlsData<'_, Data>) -> Result<(), PumpError> {
    let old = tx.len();
    let mut room = 4096;
    for _ in 0..2 {
        tx.resize(old + room, 0);
        match enc.encode(&mut tx[old..]) {
            Ok(n) => {
                tx.truncate(old + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(EncodeError::AlreadyEncoded) => break,
        }
    }
    tx.truncate(old);
    Err(PumpError::Internal("encode_failed"))
}

/// After rustls reported an error, moves what it queued for the peer (handshake bytes queued
/// before the error, then the fatal alert) into `tx`.
///
/// Each chunk comes out before rustls looks at input again. The pump stops at the alert: one
/// more call could make rustls re-read a record that failed to deframe and try to send a
/// second fatal alert (a debug assertion in rustls). When no alert was queued, the call that
/// reads input again is harmless: `rest` is the caller's buffer after the discard (so offsets
/// match) and rustls either reports its stored error or re-reads the same bytes to the same
/// error.
fn drain_alerts<C: Driver>(conn: &mut C, st: &mut Inner, rest: &mut [u8]) {
    for _ in 0..16 {
        st.stats.transitions += 1;
        let Ok(ConnectionState::EncodeTlsData(mut enc)) = conn.process(rest).state else {
            return;
        };
        let old = st.tx.len();
        if encode_into(&mut st.tx, &mut enc).is_err() || is_alert_record(&st.tx[old..]) {
            return;
        }
    }
}

/// An alert record: plaintext (type 21, 2-byte body) or TLS 1.3 protected (type 23 with a
/// 2-byte alert, the inner type byte and a 16-byte tag; no other message is that short).
fn is_alert_record(chunk: &[u8]) -> bool {
    match chunk.first() {
        Some(21) => chunk.len() == RECORD_HEADER_LEN + 2,
        Some(&CONTENT_TYPE_APPLICATION_DATA) => chunk.len() == RECORD_HEADER_LEN + 2 + 1 + 16,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_record_parses_headers() {
        assert_eq!(complete_record(&[]), None);
        assert_eq!(complete_record(&[23, 3, 3, 0]), None);
        assert_eq!(complete_record(&[23, 3, 3, 0, 2, 9]), None);
        assert_eq!(complete_record(&[23, 3, 3, 0, 2, 9, 9]), Some((23, 2)));
        assert_eq!(complete_record(&[22, 3, 3, 0, 0]), Some((22, 0)));
    }
}

#[cfg(test)]
mod pair_tests {
    //! Unit tests that need the pump's internals (the copy fallback of the receive path).
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    fn configs() -> (Arc<ClientConfig>, Arc<ServerConfig>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        let provider = Arc::new(composite_provider(true));
        let scfg = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let ccfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(ccfg), Arc::new(scfg))
    }

    fn flush(from: &mut TlsPump) -> Vec<u8> {
        let mut out = vec![0u8; 1 << 16];
        let n = from.poll_transmit(&mut out).unwrap();
        assert!(!from.wants_write());
        out.truncate(n);
        out
    }

    /// Feeds `bytes` and returns the plaintext, checking the caller contract as it goes.
    fn recv(to: &mut TlsPump, rx: &mut Vec<u8>, bytes: &[u8]) -> Vec<u8> {
        rx.extend_from_slice(bytes);
        let mut got = Vec::new();
        loop {
            let p = to.handle_ciphertext(rx).unwrap();
            got.extend_from_slice(p.plaintext(rx));
            rx.drain(..p.discard);
            if p.status != Status::CallAgain {
                return got;
            }
        }
    }

    fn handshake() -> (TlsPump, TlsPump) {
        let (ccfg, scfg) = configs();
        let mut c = TlsPump::client(ccfg, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut s = TlsPump::server(scfg).unwrap();
        let (mut crx, mut srx) = (Vec::new(), Vec::new());
        for _ in 0..8 {
            let a = flush(&mut c);
            recv(&mut s, &mut srx, &a);
            let b = flush(&mut s);
            recv(&mut c, &mut crx, &b);
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        (c, s)
    }

    #[test]
    fn first_record_verifies_in_place_then_zero_copy() {
        let (mut c, mut s) = handshake();
        assert_eq!(s.st.in_place, InPlace::Unverified);
        let mut rx = Vec::new();
        for i in 0..5u8 {
            let mut out = vec![0u8; 5000];
            let n = c.encrypt(&[i; 4000], &mut out).unwrap();
            assert_eq!(recv(&mut s, &mut rx, &out[..n]), vec![i; 4000]);
            assert_eq!(s.st.in_place, InPlace::Verified);
        }
        assert_eq!(s.stats().records_in_place, 5);
        assert_eq!(s.stats().records_copied, 0);
    }

    #[test]
    fn copy_fallback_yields_the_same_plaintext() {
        let (mut c, mut s) = handshake();
        // As if verification had failed (e.g. a future rustls decrypting elsewhere).
        s.st.in_place = InPlace::Copy;
        let mut rx = Vec::new();
        let mut all = Vec::new();
        let mut expect = Vec::new();
        for i in 0..20usize {
            let data: Vec<u8> = (0..(1 + i * 999)).map(|j| (i + j) as u8).collect();
            let mut out = vec![0u8; data.len() + 256];
            let n = c.encrypt(&data, &mut out).unwrap();
            all.extend_from_slice(&out[..n]);
            expect.extend_from_slice(&data);
        }
        assert_eq!(recv(&mut s, &mut rx, &all), expect);
        assert!(rx.is_empty());
        assert_eq!(s.stats().records_in_place, 0);
        assert!(s.stats().records_copied >= 20);
    }
}
