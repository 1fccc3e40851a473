//! Plain-TCP apps at the far end of a sidecar path, and the clients that check what crossed
//! it: an echo app for bulk transfers and an app that answers only after reading EOF, for
//! half-close.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;

use super::IO_TIMEOUT;

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

/// Bytes of the request a half-close client sends, and of the answer that follows its EOF:
/// more than a socket buffer and many TLS records each way.
pub const REQUEST_BYTES: usize = 300_000;
pub const ANSWER_BYTES: usize = 1_000_000;

/// An app that reads the whole request to EOF and only then answers: a summary line naming
/// itself and what it read, then `ANSWER_BYTES` of pattern, then it closes. A path that does
/// not carry the client's FIN never gets an answer.
pub fn answer_after_eof(name: &'static str) -> SocketAddr {
    serve_each(name, |mut s, name| {
        let (mut read, mut digest) = (0usize, Fnv::default());
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    read += n;
                    digest.update(&buf[..n]);
                }
                // Never saw EOF: no answer, and the client's bounded read fails the test.
                Err(_) => return,
            }
        }
        let mut answer = summary(name, read, digest.0).into_bytes();
        answer.extend_from_slice(&pattern(ANSWER_BYTES));
        let _ = s.write_all(&answer);
    })
}

/// Sends a request, shuts the write side with `shut`, and checks that the whole answer of an
/// `answer_after_eof` app named `name` arrives after it, ending with the app's close.
pub fn half_close_exchange<S: Read + Write>(mut s: S, shut: impl FnOnce(&mut S), name: &str) {
    let request = pattern(REQUEST_BYTES);
    s.write_all(&request).unwrap();
    shut(&mut s);
    let mut answer = Vec::new();
    if let Err(e) = s.read_to_end(&mut answer) {
        // A read timeout (WouldBlock) here: the FIN or the answer was not carried.
        panic!(
            "{name}: no complete answer after the half-close, {} bytes then {e}",
            answer.len()
        );
    }
    let mut digest = Fnv::default();
    digest.update(&request);
    let line = summary(name, REQUEST_BYTES, digest.0);
    let (head, body) = answer.split_at(line.len().min(answer.len()));
    assert_eq!(
        String::from_utf8_lossy(head),
        line,
        "{name}: the answer's first line"
    );
    assert!(
        body == pattern(ANSWER_BYTES),
        "{name}: answer body of {} bytes differs",
        body.len()
    );
}

fn summary(name: &str, read: usize, digest: u64) -> String {
    format!("{name} read {read} bytes, fnv {digest:016x}\n")
}

/// Streaming 64 KiB at a time, so a 100 MB transfer holds no 100 MB buffers.
const CHUNK: usize = 64 * 1024;

/// Sends `total` bytes of pattern (whole 64 KiB chunks) through `stream` to an echo app,
/// half-closes, checks that exactly those bytes come back in order, and returns what follows
/// them (the app's sign-off). Every read and write is bounded by `timeout`.
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

/// Sends `payload` from another thread while reading (an echo path would otherwise fill every
/// buffer and stall), finishes sending, and returns everything the far side answered.
pub fn exchange<S: Read + Write + Send + 'static>(
    mut reader: S,
    mut writer: S,
    payload: &[u8],
    shut: fn(&S),
) -> Vec<u8> {
    let payload = payload.to_vec();
    let sending = std::thread::spawn(move || {
        writer.write_all(&payload).unwrap();
        shut(&writer);
    });
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    sending.join().unwrap();
    got
}

pub fn shut_tcp(s: &TcpStream) {
    s.shutdown(Shutdown::Write).unwrap();
}

pub fn shut_unix(s: &UnixStream) {
    s.shutdown(Shutdown::Write).unwrap();
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

fn pattern_at(offset: u64, buf: &mut [u8]) {
    assert!(offset % 8 == 0 && buf.len() % 8 == 0);
    for (k, word) in buf.chunks_exact_mut(8).enumerate() {
        let mut z = (offset / 8 + k as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

/// FNV-1a, 64 bits: the request's fingerprint in the app's answer.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Serves every connection to a new loopback listener on its own thread, with bounded reads.
fn serve_each(name: &'static str, serve: fn(TcpStream, &'static str)) -> SocketAddr {
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
