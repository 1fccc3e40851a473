//! Traffic through the listeners under test, on loopback, every read bounded: whole
//! exchanges, refusals, and connections held open across a change.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use crate::common::apps::echo_intact;
use crate::common::IO_TIMEOUT;

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// One whole exchange through 127.0.0.1:`port` to `common::apps::app(name)`: 256 KiB echoed
/// intact, a half-close, and the app's sign-off. False on any failure.
pub fn carries(port: u16, name: &str) -> bool {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let want = format!("app:{name}\n");
    std::panic::catch_unwind(|| echo_intact(s, 256 << 10, IO_TIMEOUT) == want.as_bytes())
        .unwrap_or(false)
}

/// `payload` echoed back whole through 127.0.0.1:`port`, then closed — without a half-close,
/// which `consul connect proxy` does not carry (when one direction ends it closes both).
pub fn echoes(port: u16, payload: &[u8]) -> bool {
    let stream = connect(port);
    let mut writer = stream.try_clone().unwrap();
    let sent = payload.to_vec();
    let sending = std::thread::spawn(move || writer.write_all(&sent).is_ok());
    let mut got = vec![0u8; payload.len()];
    let mut reader = stream;
    let read = reader.read_exact(&mut got).is_ok();
    sending.join().unwrap() && read && got == payload
}

/// Whether a new connection through 127.0.0.1:`port` is closed (or reset) without a byte of
/// answer after sending something: what a refused caller sees.
pub fn refused(port: u16) -> bool {
    let mut s = connect(port);
    let _ = s.write_all(b"let me in");
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset && got.is_empty(),
    }
}

/// A connection held open across a change; each `ping` must come back echoed.
pub struct Held(TcpStream);

impl Held {
    pub fn open(port: u16) -> Held {
        let mut h = Held(connect(port));
        h.ping("opened");
        h
    }

    pub fn ping(&mut self, what: &str) {
        self.0.write_all(what.as_bytes()).unwrap();
        let mut back = vec![0u8; what.len()];
        self.0
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("held connection, {what}: {e}"));
        assert_eq!(back, what.as_bytes());
    }
}
