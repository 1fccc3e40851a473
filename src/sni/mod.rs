//! Reading the server name from a TLS ClientHello without consuming or decrypting anything.
//!
//! Pure: bytes in, verdict out. Stub: filled in by the ClientHello work.

/// The longest DNS name, and so the longest SNI we route on.
pub const MAX_NAME: usize = 253;

pub type ServerName = heapless::String<MAX_NAME>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    Incomplete,
    Sni(ServerName),
    NoSni,
    NotTls,
    TooLarge,
}

/// Inspects the bytes a client has sent so far. `limit` bounds the raw bytes (record headers
/// included) that the whole ClientHello may take.
pub fn inspect(buf: &[u8], limit: usize) -> Hello {
    let _ = (buf, limit);
    Hello::Incomplete
}
