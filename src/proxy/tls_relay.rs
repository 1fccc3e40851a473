//! Relaying between a local plaintext socket (TCP or Unix) and an mTLS stream, keeping
//! half-close: a local EOF becomes a TLS close_notify plus a TCP write shutdown, and the
//! peer's close_notify (or bare EOF, as some proxies send) a local write shutdown.
//!
//! Half-close is done on the sockets themselves: `close()` on async-io's sockets only
//! flushes, and futures-rustls' close ends in that same `close()`.

use std::cell::RefCell;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::{future, Async};

use super::buffers::Buf;
use super::relay::{Flow, Relayed};
use crate::metrics::Tally;

/// Plaintext read from TLS is copied through this much at a time. It is held for the
/// connection's life (rustls needs a buffer to read into), so it is small.
const FROM_TLS_CHUNK: usize = 4096;

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

impl ShutdownWrite for futures_rustls::client::TlsStream<Async<TcpStream>> {
    fn shutdown_write(&self) -> io::Result<()> {
        self.get_ref().0.get_ref().shutdown_write()
    }
}

impl ShutdownWrite for futures_rustls::server::TlsStream<Async<TcpStream>> {
    fn shutdown_write(&self) -> io::Result<()> {
        self.get_ref().0.get_ref().shutdown_write()
    }
}

pub async fn relay_tls<L, S>(
    local: &Async<L>,
    tls: S,
    idle: Duration,
    to_tls: Tally<'_>,
    from_tls: Tally<'_>,
) -> io::Result<Relayed>
where
    L: ShutdownWrite,
    for<'a> &'a L: Read,
    for<'a> &'a Async<L>: AsyncRead + AsyncWrite,
    S: AsyncRead + AsyncWrite + ShutdownWrite + Unpin,
{
    // Both directions run in this one task and a poll never spans another, so each can
    // borrow the stream for the length of one poll.
    let tls = RefCell::new(tls);
    let flow = Flow::new();
    let up = local_to_tls(local, Shared(&tls), to_tls, &flow);
    let down = tls_to_local(Shared(&tls), local, from_tls, &flow);
    future::or(future::try_zip(up, down), flow.watchdog(idle)).await?;
    Ok(flow.relayed())
}

/// Waits for the local socket without holding a buffer, like the plain relay.
async fn local_to_tls<L, S>(
    local: &Async<L>,
    mut tls: Shared<'_, S>,
    total: Tally<'_>,
    flow: &Flow,
) -> io::Result<()>
where
    for<'a> &'a L: Read,
    S: AsyncWrite + ShutdownWrite + Unpin,
{
    loop {
        let must_wait = {
            let mut buf = Buf::take();
            match local.get_ref().read(buf.as_mut()) {
                Ok(0) => {
                    tls.close().await?;
                    return tls.0.borrow().shutdown_write();
                }
                Ok(n) => {
                    tls.write_all(&buf.as_mut()[..n]).await?;
                    tls.flush().await?;
                    total.add(n as u64);
                    flow.a_to_b.set(flow.a_to_b.get() + n as u64);
                    flow.last.set(Instant::now());
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(e) => return Err(e),
            }
        };
        if must_wait {
            local.readable().await?;
        }
    }
}

async fn tls_to_local<L, S>(
    mut tls: Shared<'_, S>,
    local: &Async<L>,
    total: Tally<'_>,
    flow: &Flow,
) -> io::Result<()>
where
    L: ShutdownWrite,
    for<'a> &'a Async<L>: AsyncWrite,
    S: AsyncRead + Unpin,
{
    let mut chunk = [0u8; FROM_TLS_CHUNK];
    let mut writer = local;
    loop {
        let n = match tls.read(&mut chunk).await {
            // A peer that closes TCP without close_notify has still finished sending.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            other => other?,
        };
        if n == 0 {
            return local.get_ref().shutdown_write();
        }
        writer.write_all(&chunk[..n]).await?;
        total.add(n as u64);
        flow.b_to_a.set(flow.b_to_a.get() + n as u64);
        flow.last.set(Instant::now());
    }
}

/// One direction's handle on the TLS stream, borrowing it for each poll only.
struct Shared<'a, S>(&'a RefCell<S>);

impl<S: AsyncRead + Unpin> AsyncRead for Shared<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shared<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}
