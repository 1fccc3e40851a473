//! TLS record layer: find the ClientHello handshake message in the raw bytes a client sent.
//!
//! The hello may be cut into any number of handshake records (a post-quantum hello over
//! 16 KiB needs two), and each record may arrive over many reads. Every header field is
//! checked as soon as its bytes are present, so a non-TLS client is turned away after the
//! first byte or two rather than after we have buffered a whole "record" of garbage.

use super::Hello;

/// Why [`find`] has no hello to hand over; a `Hello` minus the 254-byte `Sni` payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    Incomplete,
    NotTls,
    TooLarge,
}

impl From<Stop> for Hello {
    fn from(stop: Stop) -> Hello {
        match stop {
            Stop::Incomplete => Hello::Incomplete,
            Stop::NotTls => Hello::NotTls,
            Stop::TooLarge => Hello::TooLarge,
        }
    }
}

/// TLS record header: type, version (2), length (2).
const RECORD_HEADER: usize = 5;
/// Handshake header: msg_type, length (3).
const HS_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 22;
const HS_CLIENT_HELLO: u8 = 1;
/// RFC 8446 §5.2 allows 2^14 + 256 for ciphertext and TLS 1.2 allowed 2^14 + 2048; a
/// plaintext hello is never bigger, so anything beyond this is not TLS.
const MAX_RECORD: usize = (1 << 14) + 2048;

/// Where the complete ClientHello handshake message (its 4-byte header included) is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found<'a> {
    /// Entirely inside the first record: parse straight from the caller's buffer.
    Single(&'a [u8]),
    /// Spread over several records; `len` handshake bytes, to be copied out by [`gather`].
    Split { len: usize },
}

/// Checks the record header at the start of `h`, field by field as far as bytes exist.
/// `Ok(None)`: header not complete yet. `Ok(Some(len))`: the record's payload length.
fn record_header(h: &[u8]) -> Result<Option<usize>, Stop> {
    match h.first() {
        None => return Ok(None),
        Some(&CONTENT_HANDSHAKE) => {}
        Some(_) => return Err(Stop::NotTls),
    }
    match h.get(1) {
        None => return Ok(None),
        Some(3) => {}
        Some(_) => return Err(Stop::NotTls),
    }
    match h.get(2) {
        None => return Ok(None),
        Some(0..=4) => {}
        Some(_) => return Err(Stop::NotTls),
    }
    let (Some(&hi), Some(&lo)) = (h.get(3), h.get(4)) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // Zero-length handshake fragments are forbidden (RFC 8446 §5.1); refusing them also
    // means every header we walk past brings at least one handshake byte.
    if len == 0 || len > MAX_RECORD {
        return Err(Stop::NotTls);
    }
    Ok(Some(len))
}

/// Nothing wrong seen yet, but the hello is not all here: wait, unless the budget is spent.
fn incomplete(buf: &[u8], limit: usize) -> Stop {
    if buf.len() >= limit {
        Stop::TooLarge
    } else {
        Stop::Incomplete
    }
}

/// Walks the records in `buf` until the ClientHello is complete. `Err` carries the verdict
/// when it is not (yet) there.
pub(super) fn find(buf: &[u8], limit: usize) -> Result<Found<'_>, Stop> {
    // Bytes past the budget can never be part of an acceptable hello, so never look at
    // them: the verdict then depends only on the first `limit` bytes, and once given it
    // stays the same however much more the client sends.
    let buf = buf.get(..limit).unwrap_or(buf);
    let mut pos = 0usize; // start of the current record; always <= buf.len()
    let mut headers = 0usize; // record headers seen
    let mut before = 0usize; // handshake bytes in the (complete) records before `pos`
    let mut hs_head = [0u8; HS_HEADER]; // may itself straddle records

    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(len) = record_header(rest)? else {
            return Err(incomplete(buf, limit));
        };
        headers += 1;
        let payload = rest.get(RECORD_HEADER..).unwrap_or_default();
        let payload = payload.get(..len).unwrap_or(payload);

        let head_missing = HS_HEADER.saturating_sub(before);
        for (k, &b) in payload.iter().take(head_missing).enumerate() {
            let idx = before + k;
            if idx == 0 && b != HS_CLIENT_HELLO {
                return Err(Stop::NotTls);
            }
            if let Some(slot) = hs_head.get_mut(idx) {
                *slot = b;
            }
        }

        let have = before + payload.len();
        if have >= HS_HEADER {
            let [_, a, b, c] = hs_head;
            let total = HS_HEADER + u32::from_be_bytes([0, a, b, c]) as usize;
            // Each record costs a header on top of its handshake bytes, so this is a floor
            // on the raw size: if even that is over the budget, say so without waiting.
            if headers.saturating_mul(RECORD_HEADER).saturating_add(total) > limit {
                return Err(Stop::TooLarge);
            }
            if have >= total {
                // Complete. Its raw size is exactly the floor checked above.
                let used_here = total.saturating_sub(before);
                return Ok(if headers == 1 {
                    Found::Single(payload.get(..used_here).unwrap_or(payload))
                } else {
                    Found::Split { len: total }
                });
            }
        }

        if payload.len() < len {
            return Err(incomplete(buf, limit));
        }
        before += len;
        pos += RECORD_HEADER + len;
    }
}

/// Payload length of the record whose header starts at `at` (0 if out of range).
fn record_len(buf: &[u8], at: usize) -> usize {
    match (buf.get(at + 3), buf.get(at + 4)) {
        (Some(&hi), Some(&lo)) => usize::from(u16::from_be_bytes([hi, lo])),
        _ => 0,
    }
}

/// Copies the `len` handshake bytes of a hello that [`find`] reported as `Split` out of its
/// records. Bounded by `len`, which `find` only reports once all those bytes are in `buf`.
pub(super) fn gather(buf: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut at = 0usize;
    while out.len() < len {
        let rlen = record_len(buf, at);
        if rlen == 0 {
            break; // cannot happen after `find`; stop rather than spin
        }
        let start = at + RECORD_HEADER;
        let want = rlen.min(len - out.len());
        let Some(chunk) = buf.get(start..start.saturating_add(want)) else {
            break;
        };
        out.extend_from_slice(chunk);
        at = start + rlen;
    }
    out
}
