//! Checking the server an upstream connection reached: its chain against our roots, and its
//! identity — the URI SAN must be exactly the target's SPIFFE ID (Consul's clusters carry an
//! exact SAN matcher). A valid certificate of any other service is refused. Consul leaves
//! have no DNS names, so rustls' host-name check is replaced, not added to.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme,
};

use super::san::spiffe_uri;

#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: String,
        algs: WebPkiSupportedAlgorithms,
    ) -> Self {
        SpiffeServerVerifier {
            roots,
            expected,
            algs,
        }
    }
}

/// Why a server's identity was refused, carried inside rustls' error for the log line.
#[derive(Debug)]
pub struct WrongIdentity {
    pub expected: String,
    pub presented: Option<String>,
}

impl std::fmt::Display for WrongIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.presented {
            Some(p) => write!(f, "server is {p}, expected {}", self.expected),
            None => write!(
                f,
                "server certificate has no SPIFFE ID, expected {}",
                self.expected
            ),
        }
    }
}

impl std::error::Error for WrongIdentity {}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let presented = spiffe_uri(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if presented.as_deref() == Some(self.expected.as_str()) {
            return Ok(ServerCertVerified::assertion());
        }
        let why = WrongIdentity {
            expected: self.expected.clone(),
            presented,
        };
        Err(Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(why)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
