//! The ClientHello message itself: parse it with tls-parser and pull out the host name.

use tls_parser::{
    parse_tls_extension_sni_content, parse_tls_message_handshake, SNIType, TlsClientHelloContents,
    TlsExtension, TlsMessage, TlsMessageHandshake,
};

use super::{Hello, ServerName, MAX_NAME};

/// Verdict for one complete handshake message (4-byte header included).
pub(super) fn server_name(msg: &[u8]) -> Hello {
    let Ok((rest, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) =
        parse_tls_message_handshake(msg)
    else {
        return Hello::NotTls;
    };
    if !rest.is_empty() || !fills(&ch, msg.len()) {
        return Hello::NotTls;
    }
    extensions(ch.ext.unwrap_or_default())
}

/// tls-parser ignores bytes after the extensions, and when the extensions' length runs past
/// the end it reports "no extensions" instead of an error. Either way the message is not
/// what it claims, so insist that the parsed fields add up to exactly the message length.
fn fills(ch: &TlsClientHelloContents, msg_len: usize) -> bool {
    let body = 2 // legacy_version
        + ch.random.len()
        + 1 + ch.session_id.map_or(0, <[u8]>::len)
        + 2 + 2 * ch.ciphers.len()
        + 1 + ch.comp.len()
        + ch.ext.map_or(0, |e| 2 + e.len());
    msg_len.checked_sub(4) == Some(body)
}

/// Walks every extension's framing (one that overruns the block rejects the hello) and
/// returns the verdict from the single server_name extension, if any. Only server_name's
/// contents are parsed: the others are the backend's to judge, and parsing them (tls-parser
/// collects each list into a `Vec`) cost several allocations per connection.
fn extensions(mut ext: &[u8]) -> Hello {
    let mut verdict = Hello::NoSni;
    let mut seen_sni = false;
    while !ext.is_empty() {
        let Some((ty, data, rest)) = next_extension(ext) else {
            return Hello::NotTls;
        };
        ext = rest;
        if ty == SERVER_NAME {
            // Two server_name extensions are illegal (RFC 8446 §4.2), and a backend might
            // honour the other one than we routed on.
            if seen_sni {
                return Hello::NotTls;
            }
            seen_sni = true;
            let Ok((_, TlsExtension::SNI(list))) = parse_tls_extension_sni_content(data) else {
                return Hello::NotTls;
            };
            verdict = from_list(&list, data.len());
            if verdict == Hello::NotTls {
                return verdict;
            }
        }
    }
    verdict
}

const SERVER_NAME: u16 = 0;

/// The first extension of `block`: its type, its data, and the extensions after it; `None`
/// when its header or data runs past the end.
fn next_extension(block: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    let ([t0, t1, l0, l1], rest) = block.split_first_chunk::<4>()?;
    let (data, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes([*l0, *l1])))?;
    Some((u16::from_be_bytes([*t0, *t1]), data, rest))
}

/// `list` is what tls-parser made of a server_name extension with `data_len` bytes of data.
fn from_list(list: &[(SNIType, &[u8])], data_len: usize) -> Hello {
    // tls-parser stops quietly at a truncated entry and ignores bytes after the list; the
    // entries it returned must account for all of the extension data (2-byte list length,
    // then type + 2-byte length + name per entry), and the list may not be empty (RFC 6066).
    let entries: usize = list.iter().map(|(_, name)| 3 + name.len()).sum();
    if list.is_empty() || 2 + entries != data_len {
        return Hello::NotTls;
    }
    match list.iter().find(|(ty, _)| *ty == SNIType::HostName) {
        None => Hello::NoSni,
        Some((_, name)) => valid_name(name).map_or(Hello::NotTls, Hello::Sni),
    }
}

/// A routable DNS-ish name: 1..=253 bytes of letters, digits, '-', '.', '_' (underscores
/// occur in real service names). Case is kept; the router lowercases.
fn valid_name(name: &[u8]) -> Option<ServerName> {
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    if name.is_empty() || name.len() > MAX_NAME || !name.iter().all(ok) {
        return None;
    }
    ServerName::try_from(core::str::from_utf8(name).ok()?).ok()
}
