//! Relaying between a local plaintext socket (TCP or Unix) and an mTLS connection whose
//! handshake is done, keeping half-close: a local EOF becomes a TLS close_notify plus a TCP
//! write shutdown, and the peer's close_notify (or bare EOF, as some proxies send) a local
//! write shutdown.
//!
//! The socket I/O is ours, not a stream wrapper's: rustls reads at most 4 KiB per call from a
//! socket it is handed, so TLS bytes are read here a pooled buffer at a time (one syscall per
//! 32 KiB) and fed to rustls from memory; plaintext is written from rustls' own buffer
//! straight to the local socket; encrypted records leave in one vectored write. Like the
//! plain relay, a direction holds a pooled buffer only while bytes move, so an idle
//! connection keeps only rustls' state.

use std::cell::RefCell;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustls::ConnectionCommon;
use smol::{future, Async};

use super::buffers::Buf;
use super::relay::{step, Flow, Pace, Relayed, Step};
use crate::metrics::Tally;

/// Shutting down the sending half of a connection.
pub trait ShutdownWrite {
    fn shutdown_write(&self) -> io::Result<()>;
}

impl ShutdownWrite for TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl ShutdownWrite for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// rustls' connection state, borrowed by one direction at a time: both directions run in this
/// one task and no borrow is held across an await.
type Conn<'c, D> = RefCell<&'c mut ConnectionCommon<D>>;

/// Relays until both directions end, one fails, or the pair is idle for `idle`. `remote`
/// carries `tls`, whose handshake is complete.
pub async fn relay_tls<L, D>(
    local: &Async<L>,
    remote: &Async<TcpStream>,
    tls: &mut ConnectionCommon<D>,
    idle: Duration,
    to_tls: Tally<'_>,
    from_tls: Tally<'_>,
) -> io::Result<Relayed>
where
    L: ShutdownWrite,
    for<'a> &'a L: Read + Write,
{
    let tls = RefCell::new(tls);
    let flow = Flow::new();
    let up = local_to_tls(local, remote, &tls, to_tls, &flow);
    let down = tls_to_local(remote, local, &tls, from_tls, &flow);
    future::or(future::try_zip(up, down), flow.watchdog(idle)).await?;
    Ok(flow.relayed())
}

/// Plaintext from the local side, encrypted. Waits for the local socket without holding a
/// buffer; rustls holds the encrypted records until the socket takes them.
async fn local_to_tls<L, D>(
    local: &Async<L>,
    remote: &Async<TcpStream>,
    tls: &Conn<'_, D>,
    total: Tally<'_>,
    flow: &Flow,
) -> io::Result<()>
where
    for<'a> &'a L: Read,
{
    let mut pace = Pace::default();
    loop {
        send_pending(remote, tls).await?;
        let read = {
            let mut buf = Buf::take();
            let read = step(local.get_ref().read(buf.as_mut()))?;
            if let Step::Moved(n) = read {
                // Flushed above, so rustls' output limit (64 KiB) takes a whole buffer.
                tls.borrow_mut().writer().write_all(&buf.as_mut()[..n])?;
                flow.moved(total, &flow.a_to_b, n);
            }
            read
        };
        if read == Step::Eof {
            tls.borrow_mut().send_close_notify();
            send_pending(remote, tls).await?;
            return remote.get_ref().shutdown(Shutdown::Write);
        }
        pace.next(read == Step::Wait, local.readable()).await?;
    }
}

/// Writes every TLS byte rustls has queued (records, alerts, close_notify).
async fn send_pending<D>(remote: &Async<TcpStream>, tls: &Conn<'_, D>) -> io::Result<()> {
    loop {
        let sent = {
            let mut tls = tls.borrow_mut();
            if !tls.wants_write() {
                return Ok(());
            }
            tls.write_tls(&mut remote.get_ref())
        };
        match sent {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => remote.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes what rustls has queued as far as the socket takes it now.
fn try_send<D>(remote: &Async<TcpStream>, tls: &Conn<'_, D>) -> io::Result<()> {
    let mut tls = tls.borrow_mut();
    while tls.wants_write() {
        match step(tls.write_tls(&mut remote.get_ref()))? {
            Step::Wait | Step::Eof => break,
            Step::Moved(_) | Step::Again => {}
        }
    }
    Ok(())
}

/// TLS from the peer, decrypted to the local side.
async fn tls_to_local<L, D>(
    remote: &Async<TcpStream>,
    local: &Async<L>,
    tls: &Conn<'_, D>,
    total: Tally<'_>,
    flow: &Flow,
) -> io::Result<()>
where
    L: ShutdownWrite,
    for<'a> &'a L: Write,
{
    let mut pace = Pace::default();
    loop {
        // Whatever rustls already holds (from the handshake's last read, or below).
        if deliver(tls, local, total, flow).await? == Peer::Finished {
            return local.get_ref().shutdown_write();
        }
        let mut buf = Buf::take();
        let read = step(remote.get_ref().read(buf.as_mut()))?;
        match read {
            // A peer that closes TCP without close_notify has still finished sending; an
            // incomplete record it left is dropped.
            Step::Eof => return local.get_ref().shutdown_write(),
            Step::Moved(n) => {
                let mut fed = &buf.as_mut()[..n];
                while !fed.is_empty() {
                    {
                        let mut tls = tls.borrow_mut();
                        tls.read_tls(&mut fed)?;
                        tls.process_new_packets().map_err(io::Error::other)?;
                    }
                    // Alerts or key updates may need an answer: sent if the socket takes it now,
                    // else by the other direction, which flushes before it reads. Waiting for
                    // the socket here would tie this direction to the other's backlog: a peer
                    // that stops reading until it can write would deadlock the pair.
                    try_send(remote, tls)?;
                    // Records need delivering before rustls accepts more (it buffers 16 KiB).
                    if deliver(tls, local, total, flow).await? == Peer::Finished {
                        return local.get_ref().shutdown_write();
                    }
                }
            }
            Step::Wait | Step::Again => {}
        }
        drop(buf);
        pace.next(read == Step::Wait, remote.readable()).await?;
    }
}

#[derive(PartialEq, Eq)]
enum Peer {
    /// Nothing more to deliver now.
    Drained,
    /// The peer sent close_notify (or closed TCP) and every byte before it is delivered.
    Finished,
}

/// Writes the plaintext rustls holds to the local socket, from rustls' own buffer.
async fn deliver<L, D>(
    tls: &Conn<'_, D>,
    local: &Async<L>,
    total: Tally<'_>,
    flow: &Flow,
) -> io::Result<Peer>
where
    for<'a> &'a L: Write,
{
    loop {
        let written = {
            let mut tls = tls.borrow_mut();
            let mut reader = tls.reader();
            let chunk = match reader.fill_buf() {
                Ok([]) => return Ok(Peer::Finished),
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Peer::Drained),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Peer::Finished),
                Err(e) => return Err(e),
            };
            match local.get_ref().write(chunk) {
                Ok(n) => {
                    reader.consume(n);
                    Some(n)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Some(0),
                Err(e) => return Err(e),
            }
        };
        match written {
            Some(n) => flow.moved(total, &flow.b_to_a, n),
            None => local.writable().await?,
        }
    }
}
