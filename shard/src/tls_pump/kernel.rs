//! The pump after the handshake: rustls hands the traffic secrets over
//! (`dangerous_into_kernel_connection`) and the connection runs on the own record layer
//! ([`crate::tls_record`]), with rustls's `KernelConnection` kept only for what follows a
//! handshake: new secrets on a KeyUpdate, and NewSessionTickets on a client.
//!
//! Owns the meaning of post-handshake records: application data (yielded in place), alerts
//! (close_notify both ways; `user_canceled` tolerated a few times; anything else fails the
//! connection), KeyUpdate (received: new receive key, answered when the peer asks; sent: before
//! the confidentiality limit, or on request), NewSessionTicket (handed to rustls so resumption
//! keeps working), and the fatal alert sent when a record fails. The limits mirror rustls and
//! BoringSSL: 32 consecutive empty records, 32 KeyUpdates between application data records, 4
//! warning alerts.

use std::ops::Range;

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::pki_types::CertificateDer;
use rustls::server::ServerConnectionData;
use rustls::{
    AlertDescription, CipherSuite, ExtractedSecrets, HandshakeKind, InvalidMessage, NamedGroup,
    PeerMisbehaved, ProtocolVersion,
};

use super::{Inner, PumpError, Status};
use crate::tls_record::{
    AeadAlgorithm, ContentType, RecordError, RecordOpener, RecordSealer, HEADER_LEN, MAX_PLAINTEXT,
    SEAL_OVERHEAD,
};

/// Consecutive empty application-data records tolerated (rustls, BoringSSL `kMaxEmptyRecords`).
const MAX_EMPTY_RECORDS: u8 = 32;
/// KeyUpdates tolerated between two application-data records (BoringSSL `kMaxKeyUpdates`).
const MAX_KEY_UPDATES: u8 = 32;
/// Warning alerts (`user_canceled`) tolerated per connection (BoringSSL `kMaxWarningAlerts`).
const MAX_WARNING_ALERTS: u8 = 4;
/// Largest post-handshake message accepted (rustls's handshake message limit).
const MAX_HANDSHAKE_MESSAGE: usize = 0xffff;
/// Records sealed before the confidentiality limit at which the sender updates its key: the
/// margin covers every record of one send batch.
const REKEY_MARGIN: u64 = 1 << 16;

/// Handshake message types seen after the handshake.
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;
/// Alert descriptions handled here.
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;

/// What the handshake negotiated, kept after rustls's connection is consumed.
#[derive(Debug, Clone, Default)]
pub(super) struct HandshakeInfo {
    pub(super) group: Option<NamedGroup>,
    pub(super) alpn: Option<Vec<u8>>,
    pub(super) kind: Option<HandshakeKind>,
    pub(super) suite: Option<CipherSuite>,
    pub(super) version: Option<ProtocolVersion>,
    pub(super) peer_certificates: Option<Vec<CertificateDer<'static>>>,
}

impl HandshakeInfo {
    pub(super) fn capture(common: &rustls::CommonState) -> Self {
        Self {
            group: common.negotiated_key_exchange_group().map(|g| g.name()),
            alpn: common.alpn_protocol().map(<[u8]>::to_vec),
            kind: common.handshake_kind(),
            suite: common.negotiated_cipher_suite().map(|s| s.suite()),
            version: common.protocol_version(),
            peer_certificates: common.peer_certificates().map(<[_]>::to_vec),
        }
    }
}

/// rustls's post-handshake half of either side.
pub(super) enum KernelSide {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl KernelSide {
    fn update_tx(&mut self) -> Result<(u64, rustls::ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Client(k) => k.update_tx_secret(),
            Self::Server(k) => k.update_tx_secret(),
        }
    }

    fn update_rx(&mut self) -> Result<(u64, rustls::ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Client(k) => k.update_rx_secret(),
            Self::Server(k) => k.update_rx_secret(),
        }
    }
}

/// The connection on the own record layer.
pub(super) struct KernelTls {
    side: KernelSide,
    sealer: RecordSealer,
    opener: RecordOpener,
    pub(super) info: HandshakeInfo,
    /// A post-handshake message split across records (rare; tickets may be).
    hs: Vec<u8>,
    /// Records per sending key before a KeyUpdate is sent.
    rekey_every: u64,
    /// Sealer sequence number at which the next KeyUpdate goes out.
    rekey_at: u64,
    /// A KeyUpdate already answers the peer's request (cleared by application data).
    answered: bool,
    empty_run: u8,
    key_updates_run: u8,
    warning_alerts: u8,
}

impl KernelTls {
    pub(super) fn new(
        side: KernelSide,
        secrets: ExtractedSecrets,
        info: HandshakeInfo,
    ) -> Result<Self, PumpError> {
        let (tx_seq, tx) = &secrets.tx;
        let (rx_seq, rx) = &secrets.rx;
        let sealer = RecordSealer::new(tx, *tx_seq, None).map_err(PumpError::Record)?;
        let opener = RecordOpener::new(rx, *rx_seq, None).map_err(PumpError::Record)?;
        let rekey_every = default_rekey_every(sealer.algorithm());
        Ok(Self {
            side,
            rekey_at: sealer.seq().saturating_add(rekey_every),
            sealer,
            opener,
            info,
            hs: Vec::new(),
            rekey_every,
            answered: false,
            empty_run: 0,
            key_updates_run: 0,
            warning_alerts: 0,
        })
    }

    /// Sets the number of records after which the sending key is updated (at most the
    /// suite's confidentiality limit less a margin); applies from the current key on.
    pub(super) fn set_rekey_every(&mut self, records: u64) {
        self.rekey_every = records.clamp(1, default_rekey_every(self.sealer.algorithm()));
        self.rekey_at = self.sealer.seq().saturating_add(self.rekey_every);
    }

    pub(super) fn side(&self) -> super::Side {
        match self.side {
            KernelSide::Client(_) => super::Side::Client,
            KernelSide::Server(_) => super::Side::Server,
        }
    }

    pub(super) fn algorithm(&self) -> AeadAlgorithm {
        self.sealer.algorithm()
    }

    // -- receive ---------------------------------------------------------------------------

    pub(super) fn handle(
        &mut self,
        st: &mut Inner,
        incoming: &mut [u8],
    ) -> Result<super::Progress, PumpError> {
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if st.closed {
            return Ok(st.progress(incoming.len(), 0..0, Status::Closed));
        }
        if st.peer_closed {
            return Ok(st.progress(incoming.len(), 0..0, Status::PeerClosed));
        }
        let mut pos = 0;
        loop {
            let opened = match self.opener.open_in_place(&mut incoming[pos..]) {
                Ok(Some(o)) => o,
                Ok(None) => return Ok(st.progress(pos, 0..0, Status::NeedsInput)),
                Err(e) => return Err(self.fail(st, PumpError::Record(e))),
            };
            let plain: Range<usize> = pos + opened.plaintext.start..pos + opened.plaintext.end;
            let end = pos + opened.record_len;
            match opened.content_type {
                ContentType::ApplicationData => {
                    if !self.hs.is_empty() {
                        let e = PeerMisbehaved::KeyEpochWithPendingFragment;
                        return Err(self.fail(st, PumpError::Tls(e.into())));
                    }
                    self.key_updates_run = 0;
                    if plain.is_empty() {
                        self.empty_run += 1;
                        if self.empty_run > MAX_EMPTY_RECORDS {
                            let e = PeerMisbehaved::TooManyEmptyFragments;
                            return Err(self.fail(st, PumpError::Tls(e.into())));
                        }
                        pos = end;
                        continue;
                    }
                    self.empty_run = 0;
                    st.stats.records_in_place += 1;
                    return Ok(st.progress(end, plain, Status::CallAgain));
                }
                ContentType::Handshake => {
                    if let Err(e) = self.on_handshake(st, &incoming[plain]) {
                        return Err(self.fail(st, e));
                    }
                    pos = end;
                }
                ContentType::Alert => {
                    let body = &incoming[plain];
                    if body.len() != 2 {
                        let e = InvalidMessage::MessageTooShort;
                        return Err(self.fail(st, PumpError::Tls(e.into())));
                    }
                    match body[1] {
                        ALERT_CLOSE_NOTIFY => {
                            st.peer_closed = true;
                            if st.close_queued {
                                st.closed = true;
                                return Ok(st.progress(incoming.len(), 0..0, Status::Closed));
                            }
                            return Ok(st.progress(incoming.len(), 0..0, Status::PeerClosed));
                        }
                        ALERT_USER_CANCELED if self.warning_alerts < MAX_WARNING_ALERTS => {
                            self.warning_alerts += 1;
                            pos = end;
                        }
                        d => {
                            // A fatal alert: nothing is sent back (RFC 8446 §6.2).
                            let e = rustls::Error::AlertReceived(AlertDescription::from(d));
                            return Err(st.fail(PumpError::Tls(e)));
                        }
                    }
                }
            }
        }
    }

    /// Processes the handshake messages of one record.
    fn on_handshake(&mut self, st: &mut Inner, record: &[u8]) -> Result<(), PumpError> {
        if record.is_empty() {
            return Err(PumpError::Tls(InvalidMessage::InvalidEmptyPayload.into()));
        }
        let mut held = std::mem::take(&mut self.hs);
        let data: &[u8] = if held.is_empty() {
            record
        } else {
            held.extend_from_slice(record);
            &held
        };
        let mut at = 0;
        while data.len() - at >= 4 {
            let ty = data[at];
            let len = usize::from(data[at + 1]) << 16
                | usize::from(data[at + 2]) << 8
                | usize::from(data[at + 3]);
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(PumpError::Tls(
                    InvalidMessage::HandshakePayloadTooLarge.into(),
                ));
            }
            if data.len() - at - 4 < len {
                break;
            }
            let body = &data[at + 4..at + 4 + len];
            at += 4 + len;
            match ty {
                HS_KEY_UPDATE => {
                    if at != data.len() {
                        // Data after a KeyUpdate would be under the old key.
                        return Err(PumpError::Tls(
                            PeerMisbehaved::KeyEpochWithPendingFragment.into(),
                        ));
                    }
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(PumpError::Tls(InvalidMessage::InvalidKeyUpdate.into())),
                    };
                    self.key_updates_run += 1;
                    if self.key_updates_run > MAX_KEY_UPDATES {
                        return Err(PumpError::Tls(
                            PeerMisbehaved::TooManyKeyUpdateRequests.into(),
                        ));
                    }
                    let (seq, secrets) = self.side.update_rx()?;
                    self.opener =
                        RecordOpener::new(&secrets, seq, None).map_err(PumpError::Record)?;
                    st.stats.key_updates_received += 1;
                    // Nothing may follow our close_notify, not even the answer.
                    if requested && !self.answered && !st.close_queued {
                        self.queue_key_update(st, false)?;
                        self.answered = true;
                    }
                }
                HS_NEW_SESSION_TICKET => match &mut self.side {
                    KernelSide::Client(k) => k.handle_new_session_ticket(body)?,
                    KernelSide::Server(_) => {
                        return Err(PumpError::Tls(
                            InvalidMessage::UnexpectedMessage("NewSessionTicket to a server")
                                .into(),
                        ))
                    }
                },
                _ => {
                    return Err(PumpError::Tls(
                        InvalidMessage::UnexpectedMessage("post-handshake message").into(),
                    ))
                }
            }
        }
        if at < data.len() {
            let rest = data[at..].to_vec();
            self.hs = rest;
        } else if held.capacity() <= 1024 {
            held.clear();
            self.hs = held;
        }
        Ok(())
    }

    /// Fails the connection with `e`, queueing the matching alert for the peer.
    fn fail(&mut self, st: &mut Inner, e: PumpError) -> PumpError {
        if st.failed.is_none() && !st.close_queued {
            let _ = self.queue_alert(st, alert_for(&e));
        }
        st.fail(e)
    }

    // -- send ------------------------------------------------------------------------------

    /// Seals one record whose plaintext (`plain_len` bytes) the caller wrote at
    /// `record[HEADER_LEN..]`; see [`super::TlsPump::seal_in_place`].
    pub(super) fn seal_app_data(
        &mut self,
        st: &mut Inner,
        record: &mut [u8],
        plain_len: usize,
    ) -> Result<usize, PumpError> {
        if self.sealer.seq() >= self.sealer.algorithm().confidentiality_limit() {
            return Err(st.fail(PumpError::EncryptExhausted));
        }
        let n = self
            .sealer
            .seal_in_place(record, plain_len, ContentType::ApplicationData)
            .map_err(|e| match e {
                RecordError::InsufficientSize { required } => {
                    PumpError::InsufficientSize { required }
                }
                RecordError::SequenceExhausted => st.fail(PumpError::EncryptExhausted),
                e => st.fail(PumpError::Record(e)),
            })?;
        self.answered = false;
        st.stats.records_sealed += 1;
        Ok(n)
    }

    /// Sends a KeyUpdate now if the current key has sealed its share of records, or if
    /// sealing `records` more would pass the suite's confidentiality limit. (Checked per
    /// batch: a batch may take a key past its share, never past the limit.)
    pub(super) fn reserve(&mut self, st: &mut Inner, records: u64) -> Result<(), PumpError> {
        let seq = self.sealer.seq();
        let limit = self.sealer.algorithm().confidentiality_limit();
        if seq >= self.rekey_at || seq.saturating_add(records) > limit {
            self.queue_key_update(st, false)?;
        }
        Ok(())
    }

    /// Seals a KeyUpdate into the transmit queue under the current key, then switches the
    /// sending key.
    pub(super) fn queue_key_update(
        &mut self,
        st: &mut Inner,
        request_peer: bool,
    ) -> Result<(), PumpError> {
        let msg = [HS_KEY_UPDATE, 0, 0, 1, u8::from(request_peer)];
        self.queue_record(st, ContentType::Handshake, &msg)?;
        let (seq, secrets) = self.side.update_tx().map_err(|e| st.fail(e.into()))?;
        self.sealer =
            RecordSealer::new(&secrets, seq, None).map_err(|e| st.fail(PumpError::Record(e)))?;
        self.rekey_at = seq.saturating_add(self.rekey_every);
        st.stats.key_updates_sent += 1;
        Ok(())
    }

    /// Queues close_notify.
    pub(super) fn close(&mut self, st: &mut Inner) -> Result<(), PumpError> {
        self.queue_alert(st, ALERT_CLOSE_NOTIFY)?;
        st.close_queued = true;
        if st.peer_closed {
            st.closed = true;
        }
        Ok(())
    }

    fn queue_alert(&mut self, st: &mut Inner, desc: u8) -> Result<(), PumpError> {
        let level = if desc == ALERT_CLOSE_NOTIFY || desc == ALERT_USER_CANCELED {
            1
        } else {
            2
        };
        self.queue_record(st, ContentType::Alert, &[level, desc])
    }

    /// Seals a short record (alert or post-handshake message) onto the transmit queue.
    fn queue_record(
        &mut self,
        st: &mut Inner,
        ty: ContentType,
        body: &[u8],
    ) -> Result<(), PumpError> {
        let at = st.tx.len();
        st.tx.resize(at + body.len() + SEAL_OVERHEAD, 0);
        st.tx[at + HEADER_LEN..at + HEADER_LEN + body.len()].copy_from_slice(body);
        match self.sealer.seal_in_place(&mut st.tx[at..], body.len(), ty) {
            Ok(_) => Ok(()),
            Err(e) => {
                st.tx.truncate(at);
                Err(st.fail(PumpError::Record(e)))
            }
        }
    }

    /// Encrypts `plaintext` into `out` after the pending transmit bytes; see
    /// [`super::TlsPump::encrypt`].
    pub(super) fn encrypt(
        &mut self,
        st: &mut Inner,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, PumpError> {
        let records = plaintext.len().div_ceil(MAX_PLAINTEXT);
        self.reserve(st, records as u64)?;
        let pending = st.tx.len() - st.tx_head;
        let required = pending + plaintext.len() + records * SEAL_OVERHEAD;
        if out.len() < required {
            return Err(PumpError::InsufficientSize { required });
        }
        out[..pending].copy_from_slice(&st.tx[st.tx_head..]);
        st.tx.clear();
        st.tx_head = 0;
        let mut at = pending;
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            out[at + HEADER_LEN..at + HEADER_LEN + chunk.len()].copy_from_slice(chunk);
            at += self.seal_app_data(st, &mut out[at..], chunk.len())?;
        }
        Ok(at)
    }
}

/// Records per key before an update: the suite's limit less a batch's worth of margin.
fn default_rekey_every(alg: AeadAlgorithm) -> u64 {
    alg.confidentiality_limit().saturating_sub(REKEY_MARGIN)
}

/// The alert sent for a failure.
fn alert_for(e: &PumpError) -> u8 {
    match e {
        PumpError::Record(RecordError::BadRecordMac) => 20,
        PumpError::Record(RecordError::Overflow { .. }) => 22,
        PumpError::Record(RecordError::UnexpectedHeader { .. })
        | PumpError::Record(RecordError::UnknownContentType(_))
        | PumpError::Record(RecordError::MissingContentType) => 10,
        PumpError::Tls(rustls::Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate)) => 47,
        PumpError::Tls(rustls::Error::InvalidMessage(_)) => 50,
        PumpError::Tls(rustls::Error::PeerMisbehaved(_)) => 10,
        _ => 80,
    }
}
