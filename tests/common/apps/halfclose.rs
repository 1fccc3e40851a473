//! Half-close across a sidecar path: an app that answers only after reading EOF, and the
//! clients that check the answer arrives after their own FIN.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;

use super::{pattern, serve_each};

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
