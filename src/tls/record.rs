//! TLS record protection once the handshake is done, in the caller's own buffers.
//!
//! rustls negotiates the connection and, through its `kernel` API (made for kTLS), hands over
//! the traffic keys and computes the next ones on a TLS 1.3 key update. Sealing and opening
//! the records is done here, in place: a record's plaintext is read from the socket straight
//! into the record buffer it is encrypted in, and decrypted where its ciphertext was read.
//! rustls' buffered API copies each record's plaintext into a buffer of its own to encrypt
//! it, and its unbuffered one copies more (see `proxy::tls_relay`).
//!
//! The formats (RFC 8446 §5.2–5.3 for TLS 1.3, RFC 5288 and RFC 7905 for TLS 1.2):
//! - TLS 1.3: every record is labelled application data and TLS 1.2; the real content type
//!   follows the plaintext inside the encryption, then any zero padding. The additional
//!   data is the record's header; the nonce is the key's IV XORed with the sequence number.
//! - TLS 1.2 AES-GCM: an 8-byte explicit nonce leads the record (we send the IV's last 8 bytes
//!   XORed with the sequence number, as rustls and OpenSSL do); the nonce is the IV's first 4
//!   bytes and that explicit part.
//! - TLS 1.2 ChaCha20-Poly1305: the nonce is formed as in TLS 1.3.
//! - TLS 1.2's additional data is the sequence number, the content type, the version and the
//!   plaintext's length.

use std::io;
use std::ops::Range;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

/// A record's header: content type, version (3.3 in every record we send), length.
pub const HEADER: usize = 5;
const TAG: usize = 16;
/// The most plaintext one record may carry (RFC 8446 §5.1, RFC 5246 §6.2.1).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// The longest record body accepted: TLS 1.2 allows 2048 bytes of expansion, TLS 1.3 256.
pub const MAX_BODY: usize = MAX_PLAINTEXT + 2048;

/// The content types that may follow the handshake (RFC 8446 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    Alert = 21,
    Handshake = 22,
    ApplicationData = 23,
}

impl Content {
    fn of(byte: u8) -> io::Result<Content> {
        match byte {
            21 => Ok(Content::Alert),
            22 => Ok(Content::Handshake),
            23 => Ok(Content::ApplicationData),
            _ => Err(violation(
                "a record of an unexpected content type",
                UNEXPECTED_MESSAGE,
            )),
        }
    }
}

/// The peer sent something a TLS endpoint must not: the connection ends.
pub fn broken(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Fatal alerts sent on a violation (RFC 8446 §6.2): what the peer did wrong.
pub const UNEXPECTED_MESSAGE: u8 = 10;
pub const BAD_RECORD_MAC: u8 = 20;
pub const RECORD_OVERFLOW: u8 = 22;
pub const ILLEGAL_PARAMETER: u8 = 47;
pub const DECODE_ERROR: u8 = 50;
pub const PROTOCOL_VERSION: u8 = 70;

/// The peer broke the protocol after the handshake where TLS says which fatal alert ends the
/// connection: the error carries that alert (`alert_for`), so the peer learns the cause.
#[derive(Debug)]
struct Violation {
    what: &'static str,
    alert: u8,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }
}

impl std::error::Error for Violation {}

/// `broken`, answered with the fatal alert `alert`.
pub fn violation(what: &'static str, alert: u8) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Violation { what, alert })
}

/// The fatal alert `e` calls for, when it is a `violation`.
pub fn alert_for(e: &io::Error) -> Option<u8> {
    e.get_ref()?.downcast_ref::<Violation>().map(|v| v.alert)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Tls13,
    Tls12Gcm,
    Tls12Chacha,
}

/// One direction's key, IV and sequence number.
pub struct Protection {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    form: Form,
}

impl Protection {
    /// The protection rustls negotiated for one direction, from the record with sequence
    /// number `seq` on.
    pub fn new(
        version: ProtocolVersion,
        (seq, secrets): (u64, ConnectionTrafficSecrets),
    ) -> io::Result<Protection> {
        let tls13 = match version {
            ProtocolVersion::TLSv1_3 => true,
            ProtocolVersion::TLSv1_2 => false,
            _ => return Err(broken("a TLS version other than 1.2 or 1.3")),
        };
        let (algorithm, key, iv, form) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aead::AES_128_GCM, key, iv, Form::Tls12Gcm)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aead::AES_256_GCM, key, iv, Form::Tls12Gcm)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, Form::Tls12Chacha)
            }
            _ => return Err(broken("a cipher suite sidegate does not seal itself")),
        };
        let form = if tls13 { Form::Tls13 } else { form };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| broken("a traffic key of the wrong length"))?;
        let iv = <[u8; NONCE_LEN]>::try_from(iv.as_ref())
            .map_err(|_| broken("a traffic IV of the wrong length"))?;
        Ok(Protection {
            key: LessSafeKey::new(key),
            iv,
            seq,
            form,
        })
    }

    /// Bytes in front of a record's plaintext: the header, and TLS 1.2 GCM's explicit nonce.
    pub fn prefix(&self) -> usize {
        HEADER + if self.form == Form::Tls12Gcm { 8 } else { 0 }
    }

    /// Bytes behind a record's plaintext: TLS 1.3's content type, and the tag.
    pub fn suffix(&self) -> usize {
        TAG + usize::from(self.form == Form::Tls13)
    }

    /// Records protected with this key so far (the next record's sequence number).
    pub fn records(&self) -> u64 {
        self.seq
    }

    /// The nonce of record `seq`: the IV with the sequence number XORed into its last 8 bytes.
    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// TLS 1.2's additional data for a record of `kind` with `len` bytes of plaintext.
    fn aad12(&self, kind: u8, len: usize) -> [u8; 13] {
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&self.seq.to_be_bytes());
        aad[8..11].copy_from_slice(&[kind, 3, 3]);
        aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
        aad
    }

    fn next_seq(&mut self) -> io::Result<()> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| broken("the record sequence number ran out"))?;
        Ok(())
    }

    /// Seals a record in `record`, whose `prefix()..prefix() + len` holds the plaintext (at
    /// most `MAX_PLAINTEXT`) and which has room for `suffix()` bytes behind it. Returns the
    /// record's length, header included.
    pub fn seal(&mut self, kind: Content, record: &mut [u8], len: usize) -> io::Result<usize> {
        let (prefix, total) = (self.prefix(), self.prefix() + len + self.suffix());
        if len > MAX_PLAINTEXT || record.len() < total {
            return Err(io::Error::other("a record sealed in too small a buffer"));
        }
        let nonce = self.nonce();
        let (header, body) = record[..total].split_at_mut(HEADER);
        let outer = if self.form == Form::Tls13 {
            Content::ApplicationData
        } else {
            kind
        };
        header.copy_from_slice(&[outer as u8, 3, 3, 0, 0]);
        header[3..].copy_from_slice(&((total - HEADER) as u16).to_be_bytes());
        let sealed = match self.form {
            Form::Tls13 => {
                body[len] = kind as u8;
                let (text, tag) = body.split_at_mut(len + 1);
                let aad = Aad::from(<[u8; HEADER]>::try_from(&*header).unwrap_or_default());
                seal_into(&self.key, nonce, aad, text, tag)
            }
            Form::Tls12Gcm | Form::Tls12Chacha => {
                let aad = Aad::from(self.aad12(kind as u8, len));
                let explicit = prefix - HEADER;
                body[..explicit].copy_from_slice(&nonce[4..4 + explicit]);
                let (text, tag) = body[explicit..].split_at_mut(len);
                seal_into(&self.key, nonce, aad, text, tag)
            }
        };
        sealed.map_err(|()| io::Error::other("sealing a record failed"))?;
        self.next_seq()?;
        Ok(total)
    }

    /// Opens the whole record in `record` (header included, length already checked by
    /// `body_len`) in place. Returns its content type and where its plaintext now is.
    pub fn open(&mut self, record: &mut [u8]) -> io::Result<(Content, Range<usize>)> {
        let (header, body) = record.split_at_mut(HEADER);
        let outer = header[0];
        let opened = match self.form {
            Form::Tls13 => {
                if outer != Content::ApplicationData as u8 {
                    return Err(violation(
                        "an unprotected record after the handshake",
                        UNEXPECTED_MESSAGE,
                    ));
                }
                let aad = Aad::from(<[u8; HEADER]>::try_from(&*header).unwrap_or_default());
                let nonce = Nonce::assume_unique_for_key(self.nonce());
                let text = self
                    .key
                    .open_in_place(nonce, aad, body)
                    .map_err(|_| violation("a record failed to decrypt", BAD_RECORD_MAC))?;
                // The content type is the last byte that is not padding.
                let end = text.iter().rposition(|&b| b != 0).ok_or_else(|| {
                    violation("a record with no content type", UNEXPECTED_MESSAGE)
                })?;
                let kind = Content::of(text[end])?;
                (kind, HEADER..HEADER + end)
            }
            Form::Tls12Gcm | Form::Tls12Chacha => {
                if header[1..3] != [3, 3] {
                    return Err(violation(
                        "a record of another TLS version",
                        PROTOCOL_VERSION,
                    ));
                }
                let kind = Content::of(outer)?;
                let explicit = self.prefix() - HEADER;
                let len = body.len().checked_sub(explicit + TAG).ok_or_else(|| {
                    violation("a record too short to hold its tag", BAD_RECORD_MAC)
                })?;
                let mut nonce = self.nonce();
                nonce[4..4 + explicit].copy_from_slice(&body[..explicit]);
                let aad = Aad::from(self.aad12(outer, len));
                let nonce = Nonce::assume_unique_for_key(nonce);
                self.key
                    .open_in_place(nonce, aad, &mut body[explicit..])
                    .map_err(|_| violation("a record failed to decrypt", BAD_RECORD_MAC))?;
                let start = HEADER + explicit;
                (kind, start..start + len)
            }
        };
        if opened.1.len() > MAX_PLAINTEXT {
            return Err(violation(
                "a record longer than TLS allows",
                RECORD_OVERFLOW,
            ));
        }
        self.next_seq()?;
        Ok(opened)
    }
}

/// Encrypts `text` in place and puts its tag in `tag` (which is at least the tag's length).
fn seal_into(
    key: &LessSafeKey,
    nonce: [u8; NONCE_LEN],
    aad: Aad<impl AsRef<[u8]>>,
    text: &mut [u8],
    tag: &mut [u8],
) -> Result<(), ()> {
    let nonce = Nonce::assume_unique_for_key(nonce);
    let sealed = key
        .seal_in_place_separate_tag(nonce, aad, text)
        .map_err(|_| ())?;
    tag.get_mut(..TAG)
        .ok_or(())?
        .copy_from_slice(sealed.as_ref());
    Ok(())
}

/// The length of the record body a header announces, checked: after the handshake only
/// alerts, handshake messages and application data arrive, no longer than TLS allows. The
/// version is not looked at here: TLS 1.3 must ignore it (RFC 8446 §5.1), and `open` checks
/// TLS 1.2's.
pub fn body_len(header: &[u8; HEADER]) -> io::Result<usize> {
    let [kind, _, _, high, low] = *header;
    Content::of(kind)?;
    let len = usize::from(u16::from_be_bytes([high, low]));
    if len > MAX_BODY {
        return Err(violation(
            "a record longer than TLS allows",
            RECORD_OVERFLOW,
        ));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    /// The two ends of one direction: the same key, both at sequence number 0.
    fn ends(version: ProtocolVersion) -> (Protection, Protection) {
        let end = || {
            let secrets = ConnectionTrafficSecrets::Aes256Gcm {
                key: AeadKey::from([7; 32]),
                iv: Iv::new([9; NONCE_LEN]),
            };
            Protection::new(version, (0, secrets)).unwrap()
        };
        (end(), end())
    }

    /// A TLS 1.3 record of application data whose header says TLS `major.minor`, sealed with
    /// that header as its additional data, as its sender would.
    fn labelled(tx: &mut Protection, [major, minor]: [u8; 2], text: &[u8]) -> Vec<u8> {
        let body = text.len() + 1 + TAG;
        let mut record = [&[23, major, minor][..], &(body as u16).to_be_bytes(), text].concat();
        record.resize(HEADER + body, 0);
        record[HEADER + text.len()] = Content::ApplicationData as u8;
        let aad = Aad::from(<[u8; HEADER]>::try_from(&record[..HEADER]).unwrap());
        let (text, tag) = record[HEADER..].split_at_mut(text.len() + 1);
        seal_into(&tx.key, tx.nonce(), aad, text, tag).unwrap();
        tx.next_seq().unwrap();
        record
    }

    /// TLS 1.3 says a record's version must be ignored for all purposes: a record labelled
    /// TLS 1.0 opens like any other.
    #[test]
    fn a_tls13_record_opens_whatever_version_its_header_names() {
        let (mut tx, mut rx) = ends(ProtocolVersion::TLSv1_3);
        for version in [[3, 3], [3, 1], [2, 0]] {
            let mut record = labelled(&mut tx, version, b"to db");
            let header = <[u8; HEADER]>::try_from(&record[..HEADER]).unwrap();
            assert_eq!(body_len(&header).unwrap(), record.len() - HEADER);
            let (kind, text) = rx.open(&mut record).unwrap();
            assert_eq!(
                (kind, &record[text]),
                (Content::ApplicationData, &b"to db"[..])
            );
        }
    }

    /// TLS 1.2 names the version in every record: another one ends the connection with
    /// protocol_version, before anything is decrypted.
    #[test]
    fn a_tls12_record_of_another_version_gets_protocol_version() {
        let (mut tx, mut rx) = ends(ProtocolVersion::TLSv1_2);
        let text = b"to db";
        let mut record = vec![0; tx.prefix() + text.len() + tx.suffix()];
        record[tx.prefix()..][..text.len()].copy_from_slice(text);
        let len = tx
            .seal(Content::ApplicationData, &mut record, text.len())
            .unwrap();
        record.truncate(len);
        let mut other = record.clone();
        other[2] = 1;
        let error = rx.open(&mut other).unwrap_err();
        assert_eq!(alert_for(&error), Some(PROTOCOL_VERSION), "{error}");
        let (kind, text) = rx.open(&mut record).unwrap();
        assert_eq!(
            (kind, &record[text]),
            (Content::ApplicationData, &b"to db"[..])
        );
    }
}
