//! Why a TLS handshake failed, as a metric label: "the peer's certificate is for another
//! service" and "the peer never answered" call for different fixes.

use std::io;

use rustls::{CertificateError, Error};

use super::Counter;
use crate::tls::verify::WrongIdentity;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished in time.
    Timeout,
    /// A client offered no certificate where one is required (inbound).
    NoClientCertificate,
    /// The peer's chain does not lead to our roots.
    UntrustedCertificate,
    /// A trusted certificate, but for another SPIFFE identity than the one required.
    WrongIdentity,
    /// Expired, not yet valid, revoked, malformed or otherwise unusable.
    BadCertificate,
    /// The peer refused us with an alert (often: it does not trust our certificate).
    AlertReceived,
    /// Not TLS, or TLS we do not speak.
    Protocol,
    /// The connection failed underneath (reset, closed early).
    Connection,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 8] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::NoClientCertificate,
        HandshakeFailure::UntrustedCertificate,
        HandshakeFailure::WrongIdentity,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::AlertReceived,
        HandshakeFailure::Protocol,
        HandshakeFailure::Connection,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NoClientCertificate => "no_client_certificate",
            HandshakeFailure::UntrustedCertificate => "untrusted_certificate",
            HandshakeFailure::WrongIdentity => "wrong_identity",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::AlertReceived => "alert_received",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Connection => "connection",
        }
    }

    /// Reads the rustls error the handshake (`proxy::handshake`) wraps in its `io::Error`.
    pub fn of(e: &io::Error) -> HandshakeFailure {
        if e.kind() == io::ErrorKind::TimedOut {
            return HandshakeFailure::Timeout;
        }
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) else {
            return HandshakeFailure::Connection;
        };
        match tls {
            Error::NoCertificatesPresented => HandshakeFailure::NoClientCertificate,
            Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                HandshakeFailure::UntrustedCertificate
            }
            Error::InvalidCertificate(CertificateError::Other(other))
                if other.0.downcast_ref::<WrongIdentity>().is_some() =>
            {
                HandshakeFailure::WrongIdentity
            }
            Error::InvalidCertificate(_) => HandshakeFailure::BadCertificate,
            Error::AlertReceived(_) => HandshakeFailure::AlertReceived,
            _ => HandshakeFailure::Protocol,
        }
    }
}

/// Failed handshakes of one role, by reason.
#[derive(Debug, Default)]
pub struct HandshakeFailures([Counter; HandshakeFailure::ALL.len()]);

impl HandshakeFailures {
    /// Counts one failure and says which reason it was counted under.
    pub fn record(&self, e: &io::Error) -> HandshakeFailure {
        let why = HandshakeFailure::of(e);
        self.0[why as usize].inc();
        why
    }

    pub fn of(&self, why: HandshakeFailure) -> &Counter {
        &self.0[why as usize]
    }

    /// Every failure, whatever the reason.
    pub fn get(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn classifies_rustls_errors() {
        let wrap = |e: Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let wrong = WrongIdentity {
            expected: "spiffe://td/x".into(),
            presented: None,
        };
        let cases = [
            (
                io::Error::new(io::ErrorKind::TimedOut, "t"),
                HandshakeFailure::Timeout,
            ),
            (
                io::Error::from(io::ErrorKind::ConnectionReset),
                HandshakeFailure::Connection,
            ),
            (
                wrap(Error::NoCertificatesPresented),
                HandshakeFailure::NoClientCertificate,
            ),
            (
                wrap(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
                HandshakeFailure::UntrustedCertificate,
            ),
            (
                wrap(Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(wrong)),
                ))),
                HandshakeFailure::WrongIdentity,
            ),
            (
                wrap(Error::InvalidCertificate(CertificateError::Expired)),
                HandshakeFailure::BadCertificate,
            ),
            (
                wrap(Error::AlertReceived(
                    rustls::AlertDescription::BadCertificate,
                )),
                HandshakeFailure::AlertReceived,
            ),
            (
                wrap(Error::HandshakeNotComplete),
                HandshakeFailure::Protocol,
            ),
        ];
        let f = HandshakeFailures::default();
        for (e, want) in &cases {
            assert_eq!(f.record(e), *want, "{e}");
        }
        assert_eq!(f.get(), cases.len() as u64);
        assert_eq!(f.of(HandshakeFailure::Timeout).get(), 1);
    }
}
