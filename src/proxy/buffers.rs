//! A per-thread pool of fixed-size byte buffers.
//!
//! A connection holds a buffer only while bytes are in flight: an idle relayed connection
//! holds none, which is what keeps a thousand held connections within a few MiB. Reusing
//! buffers keeps the steady-state data path free of allocation.

use std::cell::RefCell;

/// Big enough for a full TLS record plus headers, so one read moves one record.
pub const BUF_SIZE: usize = 32 * 1024;
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

/// Bytes a client sent before we knew where to send them (its ClientHello). Starts at 2 KiB
/// (most hellos, post-quantum ones included, fit) and doubles up to the configured limit, so
/// a slow client trickling a hello pins little memory.
#[derive(Default)]
pub struct HelloBuf {
    bytes: Vec<u8>,
    len: usize,
}

impl HelloBuf {
    const FIRST: usize = 2048;

    pub fn filled(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Free space to read into; empty once `limit` bytes are held.
    pub fn spare(&mut self, limit: usize) -> &mut [u8] {
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

#[cfg(test)]
mod tests {
    use super::*;

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
