//! Relaying between a local plaintext socket (TCP or Unix) and an mTLS stream, keeping
//! half-close: a local EOF becomes a TLS close_notify and a TCP write shutdown, and the peer's
//! close_notify (or bare EOF, as some proxies send) becomes a local write shutdown.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::{future, Async};

use super::buffers::Buf;
use super::relay::{Flow, Relayed};
use crate::metrics::Counter;

/// Plaintext read from TLS is copied through this much at a time. It is held for the
/// connection's life (rustls needs a buffer to read into), so it is small.
const FROM_TLS_CHUNK: usize = 4096;

pub async fn relay_tls<L, S>(
    local: &Async<L>,
    tls: S,
    idle: Duration,
    to_tls: &Counter,
    from_tls: &Counter,
) -> io::Result<Relayed>
where
    for<'a> &'a L: Read,
    for<'a> &'a Async<L>: AsyncRead + AsyncWrite,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tls_read, mut tls_write) = smol::io::split(tls);
    let flow = Flow::new();
    let up = local_to_tls(local, &mut tls_write, to_tls, &flow);
    let down = tls_to_local(&mut tls_read, local, from_tls, &flow);
    future::or(future::try_zip(up, down), flow.watchdog(idle)).await?;
    Ok(flow.relayed())
}

/// Waits for the local socket without holding a buffer, like the plain relay.
async fn local_to_tls<L, W>(
    local: &Async<L>,
    tls: &mut W,
    total: &Counter,
    flow: &Flow,
) -> io::Result<()>
where
    for<'a> &'a L: Read,
    W: AsyncWrite + Unpin,
{
    loop {
        let must_wait = {
            let mut buf = Buf::take();
            match local.get_ref().read(buf.as_mut()) {
                Ok(0) => {
                    tls.close().await?;
                    return Ok(());
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

async fn tls_to_local<R, L>(
    tls: &mut R,
    local: &Async<L>,
    total: &Counter,
    flow: &Flow,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    for<'a> &'a Async<L>: AsyncWrite,
{
    let mut chunk = [0u8; FROM_TLS_CHUNK];
    let mut writer = local;
    loop {
        let n = match tls.read(&mut chunk).await {
            Ok(0) => 0,
            // A peer that closes TCP without close_notify has still finished sending.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Ok(n) => n,
            Err(e) => return Err(e),
        };
        if n == 0 {
            writer.close().await?;
            return Ok(());
        }
        writer.write_all(&chunk[..n]).await?;
        total.add(n as u64);
        flow.b_to_a.set(flow.b_to_a.get() + n as u64);
        flow.last.set(Instant::now());
    }
}
