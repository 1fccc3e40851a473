//! A TLS client of the tests: connected and handshaken, bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::IO_TIMEOUT;

pub type Client = StreamOwned<ClientConnection, TcpStream>;

/// Connects through `addr` with SNI `sni` (an IP address as `sni` sends none) and completes
/// the handshake, verifying the server's certificate against the test CA for that name.
pub fn tls_connect(addr: SocketAddr, sni: &str, cfg: &Arc<ClientConfig>) -> io::Result<Client> {
    let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(io::Error::other)?;
    let conn = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}
