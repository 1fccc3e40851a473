//! Reading the server name from a TLS ClientHello without consuming or decrypting anything.
//!
//! Pure: bytes in, verdict out. The input is whatever a stranger sent us, so nothing here
//! indexes unchecked, unwraps or overflows, and a verdict is reached as early as the bytes
//! allow. `records` finds the hello in the record layer; `hello` reads the name.

mod hello;
mod records;
#[cfg(test)]
mod tests;

/// The longest DNS name, and so the longest SNI we route on.
pub const MAX_NAME: usize = 253;

pub type ServerName = heapless::String<MAX_NAME>;

// The name is held inline (no allocation per connection); the size is the point.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// Nothing wrong so far, but the ClientHello is not all here yet: read more.
    Incomplete,
    /// The host_name from the server_name extension, exactly as sent (case preserved).
    Sni(ServerName),
    /// A well-formed ClientHello without a server_name extension (or without a host_name
    /// entry in it).
    NoSni,
    /// Not a ClientHello we can route: not TLS at all, not a handshake record, not a
    /// ClientHello, malformed hello bytes, or a server_name that is empty, longer than
    /// [`MAX_NAME`], not ASCII, or has bytes other than letters, digits, '-', '.', '_'.
    NotTls,
    /// The hello takes (or would take) more than `limit` raw bytes.
    TooLarge,
}

/// Inspects the bytes a client has sent so far. `limit` bounds the raw bytes (record headers
/// included) that the whole ClientHello may take.
///
/// Call again with the longer buffer after each read; each call rescans from the start.
/// Record headers are checked field by field as bytes arrive, so non-TLS clients are turned
/// away after a byte or two, and a declared handshake length over `limit` is refused as soon
/// as the handshake header is in. The hello may be split over several handshake records;
/// only then is it copied out (bounded by bytes actually received). Bytes after the hello
/// (e.g. a TLS 1.3 ChangeCipherSpec or early data) are ignored.
pub fn inspect(buf: &[u8], limit: usize) -> Hello {
    match records::find(buf, limit) {
        Err(stop) => stop.into(),
        Ok(records::Found::Single(msg)) => hello::server_name(msg),
        Ok(records::Found::Split { len }) => hello::server_name(&records::gather(buf, len)),
    }
}
