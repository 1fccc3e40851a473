//! rustls configurations for the sidecar, built once per plan (by the runtime, `proxy::Serving`): one client config per upstream
//! (its expected server identity differs) and one server config for the inbound listener.
//! TLS 1.2 is the floor, as in Consul's defaults; ring is the only provider.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use x509_parser::prelude::{FromDer, X509Certificate};

use super::san::spiffe_uri;
use super::verify::SpiffeServerVerifier;
use super::Identity;
use crate::names::SpiffeId;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(identity: &Identity) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for root in &identity.roots {
        roots.add(root.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Outbound mTLS to one upstream: our leaf as client certificate; the server must chain to
/// our roots and prove exactly `expected` (the target's SPIFFE ID, as its URI).
pub fn client_config(
    identity: &Identity,
    expected: &dyn std::fmt::Display,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let verifier = SpiffeServerVerifier::new(
        root_store(identity)?,
        expected.to_string(),
        provider.signature_verification_algorithms,
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    // The relay seals and opens records itself (`record`): rustls hands the keys over.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// Inbound mTLS: our leaf; a client certificate chaining to our roots is required. Any SNI
/// (or none, as Consul's built-in proxy sends) is accepted.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
    let clients =
        WebPkiClientVerifier::builder_with_provider(root_store(identity)?, provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .with_client_cert_verifier(clients)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// The verified caller's identity after an inbound handshake, from its leaf, for
/// authorization.
pub fn caller(leaf: &CertificateDer<'_>) -> Option<SpiffeId> {
    SpiffeId::parse(&spiffe_uri(leaf).ok()??).ok()
}

/// The caller certificate's serial as Consul writes serials (`0a:1b:...`); empty if unknown.
pub fn caller_serial(leaf: &CertificateDer<'_>) -> String {
    X509Certificate::from_der(leaf)
        .map(|(_, cert)| cert.raw_serial_as_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, ServerConnection};

    use crate::tls::fixtures::{identity, TD};

    /// Runs a full handshake in memory; the error is whichever side failed first.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..20 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                server.read_tls(&mut buf.as_slice()).unwrap();
                server.process_new_packets()?;
            }
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                client.read_tls(&mut buf.as_slice()).unwrap();
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    fn sni() -> ServerName<'static> {
        ServerName::try_from(format!("web.default.dc1.internal.{TD}")).unwrap()
    }

    #[test]
    fn origination_requires_exactly_the_target_identity() {
        let web = identity("web.pem", "web-key-sec1.pem");
        let db = identity("db.pem", "db-key-pkcs1.pem");
        let server_cfg = server_config(&web).unwrap();

        // db calls web and expects web: both sides verify, and web learns it is db.
        let mut client =
            ClientConnection::new(client_config(&db, &web.spiffe_id).unwrap(), sni()).unwrap();
        let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
        handshake(&mut client, &mut server).unwrap();
        let leaf = &server.peer_certificates().unwrap()[0];
        assert_eq!(caller(leaf), Some(db.spiffe_id.clone()));

        // A valid certificate of another identity is refused: db expects api, web answers.
        let api = SpiffeId::service(TD, "default", "default", "dc1", "api");
        let mut client = ClientConnection::new(client_config(&db, &api).unwrap(), sni()).unwrap();
        let mut server = ServerConnection::new(server_cfg).unwrap();
        let err = handshake(&mut client, &mut server)
            .expect_err("impostor must be refused")
            .to_string();
        assert!(
            err.contains("/svc/web") && err.contains("/svc/api"),
            "{err}"
        );
    }

    #[test]
    fn inbound_requires_a_client_certificate() {
        let web = identity("web.pem", "web-key-sec1.pem");
        let no_cert = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&TLS13, &TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
                root_store(&web).unwrap(),
                web.spiffe_id.to_string(),
                provider().signature_verification_algorithms,
            )))
            .with_no_client_auth();
        let mut client = ClientConnection::new(Arc::new(no_cert), sni()).unwrap();
        let mut server = ServerConnection::new(server_config(&web).unwrap()).unwrap();
        assert!(handshake(&mut client, &mut server).is_err());
    }
}
