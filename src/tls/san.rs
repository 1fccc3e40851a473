//! The SPIFFE ID a certificate proves: its first `spiffe://` URI SAN. Used for our own leaf,
//! for the server an upstream connection reaches, and for the caller of the inbound listener.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The first `spiffe://` URI SAN, `Ok(None)` when there is none, `Err` when the certificate
/// cannot be read.
pub fn spiffe_uri(cert: &CertificateDer<'_>) -> Result<Option<String>, String> {
    let (_, cert) = X509Certificate::from_der(cert).map_err(|e| e.to_string())?;
    spiffe_uri_of(&cert)
}

pub(super) fn spiffe_uri_of(cert: &X509Certificate<'_>) -> Result<Option<String>, String> {
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
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
