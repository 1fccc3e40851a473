//! Dev-time helper: make a rustls client (ring provider) connect to 127.0.0.1:PORT with a
//! given SNI, so `tests/fixtures/hellos/capture.py` can record the real ClientHello bytes.
//!
//! `cargo run --example rustls_hello -- PORT NAME`. The handshake is expected to fail (the
//! capture tool hangs up after the hello); this exits 0 once the hello has been sent.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: rustls_hello PORT NAME")?
        .parse()?;
    let name = args.next().ok_or("usage: rustls_hello PORT NAME")?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name)?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name)?;

    let mut sock = TcpStream::connect(("127.0.0.1", port))?;
    // Only the first flight matters: write it and let the peer close.
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    sock.flush()?;
    let _ = conn.complete_io(&mut sock);
    Ok(())
}
