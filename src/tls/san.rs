//! The SPIFFE ID a certificate proves: its first `spiffe://` URI SAN. Used for our own leaf,
//! for the server an upstream connection reaches, and for the caller of the inbound listener.

use std::fmt;

use rustls::pki_types::CertificateDer;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate's SANs cannot be read; shown as the parser words it.
#[derive(Clone, Debug, PartialEq)]
pub enum SanError {
    /// Not a DER X.509 certificate.
    Certificate(x509_parser::nom::Err<X509Error>),
    /// A certificate, but its subjectAltName extension is malformed (or repeated).
    Extension(X509Error),
}

impl fmt::Display for SanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SanError::Certificate(e) => fmt::Display::fmt(e, f),
            SanError::Extension(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for SanError {}

/// The first `spiffe://` URI SAN, `Ok(None)` when there is none, `Err` when the certificate
/// cannot be read.
pub fn spiffe_uri(cert: &CertificateDer<'_>) -> Result<Option<String>, SanError> {
    let (_, cert) = X509Certificate::from_der(cert).map_err(SanError::Certificate)?;
    spiffe_uri_of(&cert)
}

pub(super) fn spiffe_uri_of(cert: &X509Certificate<'_>) -> Result<Option<String>, SanError> {
    let san = cert
        .subject_alternative_name()
        .map_err(SanError::Extension)?;
    Ok(san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .find_map(|name| match name {
            GeneralName::URI(uri)
                if uri
                    .get(..9)
                    .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://")) =>
            {
                Some((*uri).to_owned())
            }
            _ => None,
        }))
}
