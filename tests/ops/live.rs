//! Live connections through each role that a test keeps open across a reload or a drain, and
//! the metrics once none is left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;

use super::{scrape, value, Sample};
use crate::common::{eventually, Client, IO_TIMEOUT};

/// A TCP stream that counts the bytes it moves, to compare with what sidegate counted.
pub struct Counted {
    pub inner: TcpStream,
    pub sent: u64,
    pub received: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.received += n as u64;
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A connection kept open through one role while the test does something to the process.
pub enum Live {
    /// Gateway passthrough or inbound mTLS: a TLS client.
    Tls(Box<Client>),
    /// An upstream listener: the local app's plain TCP.
    Tcp(TcpStream),
}

impl Live {
    pub fn tls(client: Client) -> Live {
        Live::Tls(Box::new(client))
    }

    pub fn tcp(addr: SocketAddr) -> io::Result<Live> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Live::Tcp(s))
    }

    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Live::Tls(t) => &mut **t,
            Live::Tcp(t) => t,
        }
    }

    /// Sends `msg` and reads exactly its echo back.
    pub fn round(&mut self, msg: &[u8]) -> io::Result<()> {
        let s = self.stream();
        s.write_all(msg)?;
        s.flush()?;
        let mut echoed = vec![0u8; msg.len()];
        s.read_exact(&mut echoed)?;
        if echoed != msg {
            return Err(io::Error::other("echo differs"));
        }
        Ok(())
    }

    /// Finishes sending (half-close) and returns everything the far end sent after that.
    pub fn finish(mut self) -> io::Result<String> {
        match &mut self {
            Live::Tls(t) => {
                t.conn.send_close_notify();
                t.flush()?;
                t.sock.shutdown(Shutdown::Write)?;
            }
            Live::Tcp(t) => t.shutdown(Shutdown::Write)?,
        }
        let mut rest = Vec::new();
        match self.stream().read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
        Ok(String::from_utf8_lossy(&rest).into_owned())
    }

    /// True once the far end has closed the connection (EOF or reset), within `IO_TIMEOUT`.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream().read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }
}

/// A TLS client that has sent its ClientHello only up to the server name: the handshake is in
/// flight, and no reader of the hello can have routed or answered it yet.
pub struct HalfHello {
    conn: rustls::ClientConnection,
    sock: TcpStream,
    rest: Vec<u8>,
}

impl HalfHello {
    pub fn send(addr: SocketAddr, sni: &str, cfg: &Arc<rustls::ClientConfig>) -> HalfHello {
        let mut sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        let cut = hello
            .windows(sni.len())
            .position(|w| w == sni.as_bytes())
            .expect("the ClientHello carries the server name");
        sock.write_all(&hello[..cut]).unwrap();
        HalfHello {
            conn,
            sock,
            rest: hello[cut..].to_vec(),
        }
    }

    /// Sends the rest of the hello and completes the handshake.
    pub fn finish(mut self) -> io::Result<Client> {
        self.sock.write_all(&self.rest)?;
        let mut tls = Client::new(self.conn, self.sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(tls)
    }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A connection attempt is refused (nothing listens there any more).
pub fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, IO_TIMEOUT),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

/// Scrapes until no connection is open in any role and `also` holds: counters are updated as
/// connections end on the event loop, after their client may already have seen the close.
pub fn scrape_when_idle(admin: SocketAddr, also: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    eventually("no connection active (and the test's condition)", || {
        let s = scrape(admin);
        let active: u64 = ["gateway", "upstream", "inbound"]
            .iter()
            .map(|r| value(&s, "sidegate_connections_active", &[("role", r)]))
            .sum();
        if active != 0 {
            Err(format!("{active} connections active"))
        } else if also(&s) {
            Ok(s)
        } else {
            Err("idle, but the test's condition does not hold".to_owned())
        }
    })
}
