//! Plain-TCP apps at the far end of a sidecar path: an echo app, and the check that a bulk
//! transfer crossed it intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

use crate::common::IO_TIMEOUT;

/// A plain TCP app: echoes until its client finishes, then signs off with `app:<name>\n`.
pub fn app(name: &'static str) -> SocketAddr {
    serve_each(name, |mut s, name| {
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.write_all(format!("app:{name}\n").as_bytes());
    })
}

/// Streaming 64 KiB at a time, so a 100 MB transfer holds no 100 MB buffers.
const CHUNK: usize = 64 * 1024;

/// Sends `total` bytes of pattern (whole 64 KiB chunks) through `stream` to an echo app,
/// half-closes, checks that exactly those bytes come back in order, and returns what follows
/// them (the app's sign-off). Every read and write is bounded by `timeout`.
#[allow(
    dead_code,
    reason = "the proxy and Consul tests use it, the operations tests do not"
)]
pub fn echo_intact(stream: TcpStream, total: u64, timeout: std::time::Duration) -> Vec<u8> {
    assert_eq!(total % CHUNK as u64, 0, "whole chunks only");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let mut chunk = vec![0u8; CHUNK];
        for offset in (0..total).step_by(CHUNK) {
            pattern_at(offset, &mut chunk);
            writer.write_all(&chunk).unwrap();
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = stream;
    let (mut got, mut want) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    for offset in (0..total).step_by(CHUNK) {
        if let Err(e) = reader.read_exact(&mut got) {
            panic!("{offset} of {total} bytes came back, then {e}");
        }
        pattern_at(offset, &mut want);
        assert!(got == want, "the 64 KiB at offset {offset} differ");
    }
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    sending.join().unwrap();
    rest
}

/// Test data that differs at every offset, so a chunk delivered twice, dropped or out of
/// order is seen (a short repeating pattern hides a shift by its period): word `k` of the
/// stream is splitmix64(k), little-endian.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.next_multiple_of(8)];
    pattern_at(0, &mut v);
    v.truncate(len);
    v
}

pub(super) fn pattern_at(offset: u64, buf: &mut [u8]) {
    assert!(offset % 8 == 0 && buf.len() % 8 == 0);
    for (k, word) in buf.chunks_exact_mut(8).enumerate() {
        let mut z = (offset / 8 + k as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

/// Serves every connection to a new loopback listener on its own thread, with bounded reads.
pub(super) fn serve_each(name: &'static str, serve: fn(TcpStream, &'static str)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(s) = stream else { continue };
            let _ = s.set_read_timeout(Some(IO_TIMEOUT * 6));
            std::thread::spawn(move || serve(s, name));
        }
    });
    addr
}
