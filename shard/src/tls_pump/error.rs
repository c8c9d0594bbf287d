//! The one error type of the TLS pump ([`PumpError`]) and its stable reason strings.
//!
//! Owns the mapping from rustls errors to stable `kind()` strings; does not log, count or decide
//! policy (the shard and `src/` do that with the kind).

use std::fmt;

/// Everything that can go wrong in a [`TlsPump`](super::TlsPump) call.
///
/// Once a call returns an error other than [`PumpError::InsufficientSize`],
/// [`PumpError::HandshakeNotComplete`] or [`PumpError::Closed`], the pump is failed: every later
/// call returns the same error, and [`TlsPump::poll_transmit`](super::TlsPump::poll_transmit)
/// still yields any fatal alert rustls queued for the peer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum PumpError {
    /// The caller's output buffer is too small; nothing was written and no state changed that
    /// would lose data. Retry with at least `required` bytes.
    InsufficientSize {
        /// Minimum size of the output buffer for this call to succeed.
        required: usize,
    },
    /// Application data cannot be encrypted (or close_notify queued) before the handshake ends.
    HandshakeNotComplete,
    /// The connection is closed for sending: close_notify was queued or both sides closed.
    Closed,
    /// The peer sent 0-RTT early data, which the pump does not accept (configure the
    /// `ServerConfig` with `max_early_data_size = 0`, the default).
    EarlyData,
    /// The sending keys are exhausted and cannot be refreshed; the connection must close.
    EncryptExhausted,
    /// The peer split its handshake into so many records that processing it would cost
    /// quadratic time (rustls re-walks every retained fragment per call: a 32 KiB ClientHello
    /// in one-byte records took 118 ms of shard CPU); a real handshake needs a few dozen
    /// rustls steps, this refuses past [`MAX_HANDSHAKE_TRANSITIONS`](crate::tls_pump::MAX_HANDSHAKE_TRANSITIONS).
    HandshakeFragmented,
    /// TLS failure reported by rustls: a peer protocol violation, a bad record, an alert from
    /// the peer, a certificate that does not verify, or a configuration mismatch.
    Tls(rustls::Error),
    /// A record failed on the own record layer (after the handshake): it did not authenticate,
    /// its header or length is not TLS 1.3's, or it has no valid inner content type. Nothing
    /// from the record was delivered.
    Record(crate::tls_record::RecordError),
    /// The rustls state machine did something the pump does not expect (a bug, never a peer's
    /// doing); the string is a stable detail.
    Internal(&'static str),
}

impl PumpError {
    /// Stable reason string for logs and metric labels.
    ///
    /// TLS errors are split so that certificate problems, peer alerts, decryption failures and
    /// protocol violations can be told apart without parsing messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InsufficientSize { .. } => "insufficient_size",
            Self::HandshakeNotComplete => "handshake_not_complete",
            Self::Closed => "closed",
            Self::EarlyData => "early_data",
            Self::EncryptExhausted => "encrypt_exhausted",
            Self::HandshakeFragmented => "handshake_fragmented",
            Self::Tls(e) => tls_kind(e),
            Self::Record(e) => e.kind(),
            Self::Internal(_) => "internal",
        }
    }

    /// True when the error ends the connection (everything except `InsufficientSize`,
    /// `HandshakeNotComplete` and `Closed`, which are caller-side conditions).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Self::InsufficientSize { .. } | Self::HandshakeNotComplete | Self::Closed
        )
    }
}

fn tls_kind(e: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(_)
        | E::NoCertificatesPresented
        | E::InvalidCertRevocationList(_)
        | E::UnsupportedNameType => "tls_certificate",
        E::AlertReceived(_) => "tls_alert_received",
        E::DecryptError => "tls_decrypt",
        E::InvalidMessage(_) => "tls_invalid_message",
        E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::PeerMisbehaved(_)
        | E::PeerSentOversizedRecord => "tls_peer_misbehaved",
        E::PeerIncompatible(_) => "tls_incompatible",
        E::NoApplicationProtocol => "tls_no_alpn",
        E::EncryptError => "tls_encrypt",
        E::HandshakeNotComplete => "handshake_not_complete",
        _ => "tls_other",
    }
}

impl fmt::Display for PumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InsufficientSize { required } => {
                write!(f, "output buffer too small: {required} bytes required")
            }
            Self::HandshakeNotComplete => f.write_str("tls handshake not complete"),
            Self::Closed => f.write_str("tls connection closed for sending"),
            Self::EarlyData => f.write_str("peer sent 0-RTT early data, which is not accepted"),
            Self::EncryptExhausted => f.write_str("tls sending keys exhausted"),
            Self::HandshakeFragmented => f.write_str("tls handshake split into too many records"),
            Self::Tls(e) => write!(f, "tls: {e}"),
            Self::Record(e) => write!(f, "tls record: {e}"),
            Self::Internal(what) => write!(f, "tls pump internal error: {what}"),
        }
    }
}

impl std::error::Error for PumpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Tls(e) => Some(e),
            Self::Record(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rustls::Error> for PumpError {
    fn from(e: rustls::Error) -> Self {
        Self::Tls(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable() {
        assert_eq!(
            PumpError::InsufficientSize { required: 3 }.kind(),
            "insufficient_size"
        );
        assert_eq!(
            PumpError::Tls(rustls::Error::DecryptError).kind(),
            "tls_decrypt"
        );
        assert_eq!(
            PumpError::Tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
            .kind(),
            "tls_certificate"
        );
        assert_eq!(
            PumpError::Tls(rustls::Error::AlertReceived(
                rustls::AlertDescription::HandshakeFailure
            ))
            .kind(),
            "tls_alert_received"
        );
        assert!(!PumpError::Closed.is_fatal());
        assert!(PumpError::EarlyData.is_fatal());
    }
}
