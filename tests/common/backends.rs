//! Real parts for integration tests: a CA, and TLS backends that each hold only their own
//! name's certificate (so a mis-routed connection fails its handshake), with the exchange
//! they answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection, StreamOwned};

use super::Client;

pub const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: OpenSSL takes a leaf whose subject equals its issuer for
        // self-signed, and rcgen gives both the same default name.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sidegate test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { issuer }
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for exactly these names, and its key.
    fn leaf(&self, names: &[String]) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.to_vec()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        (params.signed_by(&key, &self.issuer).unwrap(), key)
    }

    /// A leaf for these names as PEM (certificate, key), for servers that read files.
    #[allow(
        dead_code,
        reason = "the proxy tests use it, the operations tests do not"
    )]
    pub fn leaf_pem(&self, names: &[String]) -> (String, String) {
        let (cert, key) = self.leaf(names);
        (cert.pem(), key.serialize_pem())
    }

    /// A mesh leaf as PEM (certificate, key): this SPIFFE ID as its only (URI) SAN, valid
    /// from now until `not_after`.
    #[allow(
        dead_code,
        reason = "the operations and proxy tests use it, other test binaries do not"
    )]
    pub fn spiffe_leaf_pem(
        &self,
        spiffe_id: &str,
        not_after: std::time::SystemTime,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(spiffe_id.try_into().unwrap())];
        params.not_before = std::time::SystemTime::now().into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server config holding a certificate for exactly these names.
    pub fn server_config(&self, names: &[String]) -> Arc<ServerConfig> {
        let (cert, key) = self.leaf(names);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        Arc::new(cfg)
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.issuer.der().to_vec()))
            .unwrap();
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }
}

/// A TLS server for one name. Per connection: echoes every byte until the client finishes
/// sending, then says `served-by:<name>` and closes. Runs until the test process ends.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub accepted: Arc<AtomicUsize>,
}

impl Backend {
    pub fn start(pki: &Pki, name: &str) -> Backend {
        Self::start_with(pki, name, &[])
    }

    /// A backend whose certificate also names `aliases`.
    pub fn start_with(pki: &Pki, name: &str, aliases: &[String]) -> Backend {
        let mut names = vec![name.to_owned()];
        names.extend_from_slice(aliases);
        Self::serve(pki.server_config(&names), name)
    }

    /// A backend with a given TLS configuration (e.g. a mesh leaf requiring client certificates).
    pub fn serve(cfg: Arc<ServerConfig>, name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (count, owned_name) = (accepted.clone(), name.to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (cfg, name) = (cfg.clone(), owned_name.clone());
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let _ = serve_echo(stream, cfg, &name);
                    })
                    .unwrap();
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            accepted,
        }
    }

    /// `db` of dc1 whose certificate also covers its `v2` subset name, as a sidecar serving
    /// subsets would hold.
    #[allow(
        dead_code,
        reason = "the proxy tests use it, the operations tests do not"
    )]
    pub fn db_with_subset(pki: &Pki) -> Backend {
        let name = service_sni("db", "dc1");
        Self::start_with(pki, &name, &[format!("v2.{name}")])
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn serve_echo(stream: TcpStream, cfg: Arc<ServerConfig>, name: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            // curl: answer one HTTP request with our name, so it can be checked.
            Ok(n) if first && buf[..n].starts_with(b"GET ") => {
                let body = format!("served-by:{name}\n");
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                tls.write_all(format!("{head}{body}").as_bytes())?;
                tls.conn.send_close_notify();
                tls.flush()?;
                return Ok(());
            }
            Ok(n) => {
                first = false;
                tls.write_all(&buf[..n])?;
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    tls.write_all(format!("served-by:{name}\n").as_bytes())?;
    tls.conn.send_close_notify();
    tls.flush()?;
    let _ = tls.sock.shutdown(Shutdown::Write);
    Ok(())
}

/// Sends `msg`, reads the echo, then finishes sending (close_notify and a TCP half-close)
/// and reads the backend's sign-off. Returns the backend's name.
pub fn echo_and_finish(mut tls: Client, msg: &[u8]) -> io::Result<String> {
    tls.write_all(msg)?;
    let mut echoed = vec![0u8; msg.len()];
    tls.read_exact(&mut echoed)?;
    if echoed != msg {
        return Err(io::Error::other("echo differs"));
    }
    finish_sending(&mut tls)?;
    let mut rest = String::new();
    match tls.read_to_string(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    rest.trim_end()
        .strip_prefix("served-by:")
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other(format!("no sign-off, got {rest:?}")))
}

/// Finishes sending on a TLS client as a well-behaved one does: close_notify, then a TCP
/// half-close; the far side may still answer.
pub fn finish_sending(tls: &mut Client) -> io::Result<()> {
    tls.conn.send_close_notify();
    tls.flush()?;
    tls.sock.shutdown(Shutdown::Write)
}

pub fn service_sni(service: &str, dc: &str) -> String {
    format!("{service}.default.{dc}.internal.{TD}")
}
