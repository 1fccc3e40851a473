//! A per-thread pool of fixed-size byte buffers.
//!
//! A connection holds a buffer only while bytes are in flight: an idle relayed connection
//! holds none, which is what keeps a thousand held connections within a few MiB. Reusing
//! buffers keeps the steady-state data path free of allocation.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};

/// Room for two whole TLS records (16 KiB of plaintext each, plus at most 29 bytes of framing)
/// and the header of a third: the TLS relay seals and opens two records per buffer.
pub const BUF_SIZE: usize = 33 * 1024;
/// Buffers kept for reuse per thread; bursts beyond this allocate and free.
const KEEP: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A pooled buffer, returned to the pool on drop.
pub struct Buf(Option<Box<[u8]>>);

impl Buf {
    pub fn take() -> Buf {
        let reused = POOL.with(|p| p.borrow_mut().pop());
        Buf(Some(
            reused.unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice()),
        ))
    }

    pub fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }

    pub fn as_slice(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < KEEP {
                    p.push(b);
                }
            });
        }
    }
}

/// Pipes kept for reuse per thread: each is two descriptors, given back when the process runs
/// short of them (`release_pipes`).
const KEEP_PIPES: usize = 8;

thread_local! {
    static PIPES: RefCell<Vec<(OwnedFd, OwnedFd)>> = const { RefCell::new(Vec::new()) };
}

/// A pipe for splice(2): bytes move socket → pipe → socket inside the kernel and are never
/// copied to user space. Pooled like buffers, so an idle connection holds none; one that still
/// holds bytes when dropped is closed rather than reused.
pub struct Pipe {
    /// (read end, write end); always `Some` until dropped.
    ends: Option<(OwnedFd, OwnedFd)>,
    held: usize,
}

impl Pipe {
    /// `None` when the kernel refuses a new pipe (out of descriptors): the caller copies instead.
    fn take() -> Option<Pipe> {
        let reused = PIPES.with(|p| p.borrow_mut().pop());
        let ends = match reused {
            Some(ends) => ends,
            None => pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?,
        };
        Some(Pipe {
            ends: Some(ends),
            held: 0,
        })
    }

    /// Moves what `from` has (up to the pipe's capacity) into the pipe; 0 at end of stream.
    pub fn fill(&mut self, from: impl AsFd) -> io::Result<usize> {
        let Some((_, write)) = &self.ends else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        let n = splice(from, None, write, None, PIPE_CHUNK, flags())?;
        self.held += n;
        Ok(n)
    }

    /// Moves bytes from the pipe to `to`, as many as it takes now.
    pub fn drain(&mut self, to: impl AsFd) -> io::Result<usize> {
        let Some((read, _)) = &self.ends else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        let n = splice(read, None, to, None, self.held, flags())?;
        if n == 0 {
            // The pipe lost bytes it should hold: never loop on it.
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.held -= n;
        Ok(n)
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }
}

/// Closes the pipes kept for reuse: for when the process is out of file descriptors.
pub fn release_pipes() {
    PIPES.with(|p| p.borrow_mut().clear());
}

/// A pipe's default capacity (16 pages); one splice moves at most this much.
const PIPE_CHUNK: usize = 64 * 1024;

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // One still holding bytes is closed with them.
        if let (Some(ends), 0) = (self.ends.take(), self.held) {
            PIPES.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < KEEP_PIPES {
                    p.push(ends);
                }
            });
        }
    }
}

/// What carries one direction's chunk from socket to socket. Held only while bytes are in
/// flight.
pub enum Carrier {
    Pipe(Pipe),
    Buf { buf: Buf, start: usize, end: usize },
}

impl Carrier {
    /// A pooled buffer: small messages (handshakes, requests) cost the same read and write
    /// as through a pipe, without taking two descriptors.
    pub fn buffer() -> Carrier {
        Carrier::Buf {
            buf: Buf::take(),
            start: 0,
            end: 0,
        }
    }

    /// For a stream of full chunks: moves to a pipe (zero-copy splice) when the (empty)
    /// carrier is a buffer and the kernel gives one.
    pub fn for_streaming(&mut self) {
        if let Carrier::Buf { start, end, .. } = self {
            if start == end {
                if let Some(p) = Pipe::take() {
                    *self = Carrier::Pipe(p);
                }
            }
        }
    }

    /// Reads what `from` has into the (empty) carrier; 0 at end of stream.
    pub fn fill(&mut self, mut from: &TcpStream) -> io::Result<usize> {
        match self {
            Carrier::Pipe(p) => p.fill(from),
            Carrier::Buf { buf, start, end } => {
                let n = from.read(buf.as_mut())?;
                (*start, *end) = (0, n);
                Ok(n)
            }
        }
    }

    /// Whether a `fill` that moved `n` bytes emptied its socket: a read into a buffer that
    /// had room for more. (A splice can stop short at a full pipe.)
    pub fn emptied_by(&self, n: usize) -> bool {
        matches!(self, Carrier::Buf { buf, .. } if n < buf.as_slice().len())
    }

    /// Writes as much of the carried bytes to `to` as it takes now.
    pub fn drain(&mut self, mut to: &TcpStream) -> io::Result<usize> {
        match self {
            Carrier::Pipe(p) => p.drain(to),
            Carrier::Buf { buf, start, end } => {
                let n = to.write(&buf.as_mut()[*start..*end])?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                *start += n;
                Ok(n)
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Carrier::Pipe(p) => p.is_empty(),
            Carrier::Buf { start, end, .. } => start == end,
        }
    }
}

/// Bytes a client sent before we knew where to send them (its ClientHello). Starts at 2 KiB
/// (most hellos, post-quantum ones included, fit) and doubles up to the configured limit, so
/// a slow client trickling a hello pins little memory.
///
/// The first 2 KiB come from a small per-thread pool: every gateway connection takes one for
/// a round trip, and allocating, zeroing and freeing it each time cost more than the rest of
/// the connection's allocations together (musl maps and unmaps its group as connections
/// come and go).
#[derive(Default)]
pub struct HelloBuf {
    bytes: Vec<u8>,
    len: usize,
}

/// First hello buffers kept per thread: more than a loop has hellos in flight at a time when
/// connections arrive steadily, and at most 32 KiB.
const KEEP_HELLOS: usize = 16;

thread_local! {
    static HELLOS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl HelloBuf {
    const FIRST: usize = 2048;

    pub fn filled(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Free space to read into; empty once `limit` bytes are held.
    pub fn spare(&mut self, limit: usize) -> &mut [u8] {
        if self.bytes.is_empty() && limit >= Self::FIRST {
            // A pooled buffer's stale bytes are never read: only `filled` is.
            self.bytes = HELLOS
                .with(|p| p.borrow_mut().pop())
                .unwrap_or_else(|| vec![0; Self::FIRST]);
        }
        if self.len == self.bytes.len() && self.len < limit {
            let grown = (self.bytes.len() * 2).max(Self::FIRST).min(limit);
            self.bytes.resize(grown, 0);
        }
        &mut self.bytes[self.len..]
    }

    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.bytes.len());
    }
}

impl Drop for HelloBuf {
    fn drop(&mut self) {
        if self.bytes.len() == Self::FIRST {
            let first = std::mem::take(&mut self.bytes);
            HELLOS.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < KEEP_HELLOS {
                    p.push(first);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_hello_buffer_is_reused_and_a_grown_one_is_not() {
        std::thread::spawn(|| {
            let mut h = HelloBuf::default();
            h.spare(32768)[0] = 7;
            h.advance(1);
            let first = h.filled().as_ptr();
            drop(h);
            let mut h = HelloBuf::default();
            assert_eq!(h.spare(32768).as_ptr(), first, "the pooled buffer again");
            assert!(h.filled().is_empty(), "nothing of the last hello is filled");
            h.advance(HelloBuf::FIRST);
            assert_eq!(h.spare(32768).len(), HelloBuf::FIRST, "grown to 4 KiB");
            drop(h);
            assert_eq!(
                HELLOS.with(|p| p.borrow().len()),
                0,
                "a grown buffer is freed"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn hello_buf_grows_to_limit_and_keeps_bytes() {
        let limit = BUF_SIZE + 100;
        let mut h = HelloBuf::default();
        let mut written = 0u8;
        loop {
            let spare = h.spare(limit);
            if spare.is_empty() {
                break;
            }
            let n = spare.len().min(1000);
            for b in &mut spare[..n] {
                *b = written;
                written = written.wrapping_add(1);
            }
            h.advance(n);
        }
        assert_eq!(h.filled().len(), limit);
        assert!(h
            .filled()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 256) as u8));
    }
}
