//! Sockets registered with the reactor of the loop that uses them, and what the relays and
//! the TLS handshake need of them: readiness, reads and writes, connecting and accepting.

use std::future::poll_fn;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use smol::io::{AsyncRead, AsyncWrite};

use super::{current, Reactor, Source, READ, WRITE};

/// A non-blocking socket registered with this thread's reactor: only this thread may use it,
/// and only a future run by `run` on this thread is woken by it.
pub struct Async<T: AsFd> {
    io: T,
    source: Rc<Source>,
    reactor: Rc<Reactor>,
    /// The socket may be open elsewhere too (a listener systemd keeps).
    shared: bool,
}

impl<T: AsFd> Async<T> {
    /// Makes `io` non-blocking and registers it with this thread's reactor.
    pub fn new(io: T) -> io::Result<Async<T>> {
        rustix::io::ioctl_fionbio(&io, true)?;
        Async::register(io, true)
    }

    /// Registers `io`, which is already non-blocking and open nowhere else (accepted, or
    /// made here).
    pub fn nonblocking(io: T) -> io::Result<Async<T>> {
        Async::register(io, false)
    }

    fn register(io: T, shared: bool) -> io::Result<Async<T>> {
        let reactor = current()?;
        let source = reactor.register(&io)?;
        Ok(Async {
            io,
            source,
            reactor,
            shared,
        })
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    pub fn poll_readable(&self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        self.source.poll_ready(READ, cx).map(Ok)
    }

    pub fn poll_writable(&self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        self.source.poll_ready(WRITE, cx).map(Ok)
    }

    pub async fn readable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_readable(cx)).await
    }

    pub async fn writable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_writable(cx)).await
    }

    /// The peer's FIN has been seen, without an error. It was seen before any read made now,
    /// so a read that came back shorter than its buffer took every byte before the FIN, and
    /// the kernel took the FIN with them: the next read would return 0.
    pub fn peer_finished(&self) -> bool {
        self.source.fin.get()
    }

    /// The caller's own read just returned `WouldBlock`: any edge seen so far is used up.
    pub fn read_would_block(&self) {
        self.source.clear(READ);
    }

    /// The caller's own write just returned `WouldBlock`.
    pub fn write_would_block(&self) {
        self.source.clear(WRITE);
    }

    /// Writes every byte of `parts`, in as few vectored writes as the socket allows.
    pub async fn send_all(&self, mut parts: &mut [IoSlice<'_>]) -> io::Result<()>
    where
        for<'a> &'a T: Write,
    {
        IoSlice::advance_slices(&mut parts, 0);
        while !parts.is_empty() {
            let n =
                poll_fn(|cx| self.poll_io(WRITE, cx, |mut io| io.write_vectored(parts))).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut parts, n);
        }
        Ok(())
    }

    /// Tries `op` on the socket; when it would block, waits for the next edge that way.
    fn poll_io<R>(
        &self,
        way: usize,
        cx: &Context<'_>,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            // The syscall sees everything that raised an edge so far (no event is taken in
            // the middle of a poll): those edges are used up, whatever it returns.
            self.source.clear(way);
            match op(&self.io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.source.wait(way, cx.waker());
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                done => return Poll::Ready(done),
            }
        }
    }
}

impl<T: AsFd + std::fmt::Debug> std::fmt::Debug for Async<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Async").field(&self.io).finish()
    }
}

impl<T: AsFd> Drop for Async<T> {
    fn drop(&mut self) {
        self.reactor
            .deregister(&self.io, self.source.key, self.shared);
    }
}

impl Async<TcpStream> {
    /// Connects to `addr`: a non-blocking socket, registered once the connect is under way,
    /// so that its first writable edge is the connect's outcome (a socket still connecting
    /// is never writable). An edge with an error or hang-up is a failure, and `SO_ERROR` says
    /// which; a plain writable one is a connection, known without that system call.
    pub async fn connect(addr: SocketAddr) -> io::Result<Async<TcpStream>> {
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::INET,
            SocketAddr::V6(_) => AddressFamily::INET6,
        };
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let stream = Async::nonblocking(TcpStream::from(fd))?;
        stream.writable().await?;
        if !stream.source.has_ended(WRITE) {
            return Ok(stream);
        }
        match stream.io.take_error()? {
            Some(e) => Err(e),
            None => Ok(stream),
        }
    }
}

impl Async<&TcpListener> {
    /// The next connection, already non-blocking (for `Async::nonblocking` on the loop that
    /// will serve it), and its peer.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let (fd, peer) =
            poll_fn(|cx| self.poll_io(READ, cx, |l| Ok(rustix::net::acceptfrom_with(l, flags)?)))
                .await?;
        let peer = peer
            .and_then(|p| SocketAddr::try_from(p).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no peer address"))?;
        Ok((TcpStream::from(fd), peer))
    }
}

impl Async<&UnixListener> {
    /// The next connection, already non-blocking.
    pub async fn accept(&self) -> io::Result<UnixStream> {
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let fd = poll_fn(|cx| self.poll_io(READ, cx, |l| Ok(rustix::net::accept_with(l, flags)?)))
            .await?;
        Ok(UnixStream::from(fd))
    }
}

/// Reads and writes through `&Async<T>` (the handshake and the tests hold sockets by
/// reference).
impl<T: AsFd> AsyncRead for &Async<T>
where
    for<'a> &'a T: Read,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(READ, cx, |mut io| io.read(buf))
    }
}

impl<T: AsFd + ShutdownWrite> AsyncWrite for &Async<T>
where
    for<'a> &'a T: Write,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(WRITE, cx, |mut io| io.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.shutdown_write())
    }
}

/// Shutting down the sending half of a connection.
pub trait ShutdownWrite: AsFd {
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

#[cfg(test)]
mod tests {
    use super::super::within;
    use super::*;
    use std::time::Duration;

    /// A connected pair over loopback: (the registered side, the peer as a plain socket).
    fn pair() -> (Async<TcpStream>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        (Async::new(ours).unwrap(), peer)
    }

    /// The bytes before a FIN and the FIN arrive as one edge: a read that takes the bytes
    /// (shorter than asked) leaves the FIN unread, and waiting then must still see it.
    #[test]
    fn a_fin_behind_a_short_read_is_still_seen() {
        let (ours, mut peer) = pair();
        peer.write_all(b"hello").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let got = within(async {
            ours.readable().await.unwrap();
            std::thread::sleep(Duration::from_millis(50)); // both are in before we read
            let mut buf = [0u8; 64];
            let n = ours.get_ref().read(&mut buf).unwrap();
            ours.readable().await.unwrap();
            (n, ours.get_ref().read(&mut buf).unwrap())
        });
        assert_eq!(got, Some((5, 0)));
    }

    /// What the relay skips a read on: once the FIN is seen, a read shorter than its buffer
    /// leaves nothing but the end of stream. A reset is not a FIN.
    #[test]
    fn a_fin_seen_means_a_short_read_took_everything() {
        let (ours, mut peer) = pair();
        peer.write_all(b"hello").unwrap();
        let seen = within(async {
            ours.readable().await.unwrap();
            ours.peer_finished()
        });
        assert_eq!(seen, Some(false), "a FIN seen before the peer sent one");
        peer.write_all(b" world").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let got = within(async {
            while !ours.peer_finished() {
                ours.readable().await.unwrap();
            }
            let mut buf = [0u8; 64];
            let n = ours.get_ref().read(&mut buf).unwrap();
            (n, ours.get_ref().read(&mut buf).unwrap())
        });
        assert_eq!(got, Some((11, 0)));

        let (ours, peer) = pair();
        rustix::net::sockopt::set_socket_linger(&peer, Some(Duration::ZERO)).unwrap();
        drop(peer);
        let reset = within(async {
            ours.readable().await.unwrap();
            ours.peer_finished()
        });
        assert_eq!(reset, Some(false), "a reset taken for a FIN");
    }

    /// Readiness is consumed: after a read that would block, waiting lasts until new bytes.
    #[test]
    fn a_used_edge_does_not_wake_twice() {
        let (ours, mut peer) = pair();
        peer.write_all(b"x").unwrap();
        let waited = within(async {
            ours.readable().await.unwrap();
            let mut buf = [0u8; 8];
            assert_eq!(ours.get_ref().read(&mut buf).unwrap(), 1);
            let e = ours.get_ref().read(&mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            ours.read_would_block();
            ours.readable().await
        });
        assert!(waited.is_none(), "woke with nothing to read");
    }

    /// A full send buffer: writable again once the peer reads, through `AsyncWrite`.
    #[test]
    fn writes_wait_for_room_and_resume() {
        use smol::io::AsyncWriteExt;
        let (ours, mut peer) = pair();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut all = Vec::new();
            peer.read_to_end(&mut all).unwrap();
            all.len()
        });
        let block = vec![7u8; 4 << 20];
        let wrote = within(async {
            let mut w = &ours;
            w.write_all(&block).await.unwrap();
            w.close().await.unwrap();
        });
        assert!(wrote.is_some(), "the writer never resumed");
        assert_eq!(reader.join().unwrap(), block.len());
    }

    /// Connecting: to a listener, and a refusal as an error rather than a hang.
    #[test]
    fn connect_completes_or_fails() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let s = within(Async::<TcpStream>::connect(to)).unwrap().unwrap();
        assert_eq!(s.get_ref().peer_addr().unwrap(), to);
        drop(l);
        let refused = within(Async::<TcpStream>::connect(to)).unwrap();
        assert_eq!(
            refused.unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
    }
}
