//! Table-driven tests over real captured hellos (tests/fixtures/hellos) and crafted ones.
//! Crafted hellos are real captures with extensions swapped or added and then re-framed, so
//! everything except the part under test is what a real client sends.

// A panic is how a test reports; the crate-wide unwrap/expect lints are for the data path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::records::{self, Found};
use super::*;

const BIG: usize = 1 << 20;
const DB: &str = "db.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul";
const API: &str = "api.default.dc2.internal.11111111-2222-3333-4444-555555555555.consul";
const EXT_SNI: u16 = 0;
const EXT_PADDING: u16 = 21;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/hellos/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn sni(name: &str) -> Hello {
    Hello::Sni(ServerName::try_from(name).unwrap())
}

fn fixtures() -> Vec<(&'static str, Vec<u8>, Hello)> {
    vec![
        (
            "openssl-s_client.bin",
            fixture("openssl-s_client.bin"),
            sni(DB),
        ),
        (
            "openssl-s_client-nosni.bin",
            fixture("openssl-s_client-nosni.bin"),
            Hello::NoSni,
        ),
        ("curl.bin", fixture("curl.bin"), sni("web.example.test")),
        ("rustls.bin", fixture("rustls.bin"), sni(API)),
        ("openssl-pq.bin", fixture("openssl-pq.bin"), sni(DB)),
    ]
}

fn be16(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap().to_be_bytes()
}

/// The handshake stream of a raw hello: its record payloads concatenated.
fn handshake_of(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut p = 0;
    while p + 5 <= raw.len() {
        let len = usize::from(u16::from_be_bytes([raw[p + 3], raw[p + 4]]));
        out.extend_from_slice(&raw[p + 5..p + 5 + len]);
        p += 5 + len;
    }
    out
}

/// Frames handshake bytes into handshake records of at most `max` payload bytes.
fn frame(hs: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in hs.chunks(max) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&be16(chunk.len()));
        out.extend_from_slice(chunk);
    }
    out
}

/// A ClientHello taken apart: everything before the extensions, then the extensions.
#[derive(Clone)]
struct Parts {
    fixed: Vec<u8>,
    exts: Vec<(u16, Vec<u8>)>,
}

impl Parts {
    fn of(raw: &[u8]) -> Parts {
        let hs = handshake_of(raw);
        let body = &hs[4..];
        let mut p = 2 + 32;
        p += 1 + usize::from(body[p]);
        p += 2 + usize::from(u16::from_be_bytes([body[p], body[p + 1]]));
        p += 1 + usize::from(body[p]);
        let fixed = body[..p].to_vec();
        let mut q = p + 2;
        let mut exts = Vec::new();
        while q < body.len() {
            let ty = u16::from_be_bytes([body[q], body[q + 1]]);
            let len = usize::from(u16::from_be_bytes([body[q + 2], body[q + 3]]));
            exts.push((ty, body[q + 4..q + 4 + len].to_vec()));
            q += 4 + len;
        }
        Parts { fixed, exts }
    }

    fn openssl() -> Parts {
        Parts::of(&fixture("openssl-s_client.bin"))
    }

    fn with(mut self, ty: u16, data: Vec<u8>) -> Parts {
        match self.exts.iter_mut().find(|(t, _)| *t == ty) {
            Some(slot) => slot.1 = data,
            None => self.exts.push((ty, data)),
        }
        self
    }

    fn ext_block(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ty, data) in &self.exts {
            out.extend_from_slice(&ty.to_be_bytes());
            out.extend_from_slice(&be16(data.len()));
            out.extend_from_slice(data);
        }
        out
    }

    /// The handshake message for a given body.
    fn message(body: &[u8]) -> Vec<u8> {
        let mut hs = vec![1];
        hs.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        hs.extend_from_slice(body);
        hs
    }

    fn hs(&self) -> Vec<u8> {
        let ext = self.ext_block();
        let mut body = self.fixed.clone();
        body.extend_from_slice(&be16(ext.len()));
        body.extend_from_slice(&ext);
        Parts::message(&body)
    }

    fn raw(&self) -> Vec<u8> {
        frame(&self.hs(), 1 << 14)
    }
}

/// server_name extension data from (name_type, name) entries.
fn sni_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (ty, name) in entries {
        list.push(*ty);
        list.extend_from_slice(&be16(name.len()));
        list.extend_from_slice(name);
    }
    let mut out = be16(list.len()).to_vec();
    out.extend_from_slice(&list);
    out
}

fn with_name(name: &[u8]) -> Vec<u8> {
    Parts::openssl().with(EXT_SNI, sni_ext(&[(0, name)])).raw()
}

/// The openssl hello inflated with a padding extension to `hs_len` handshake bytes and
/// framed like a big post-quantum hello: a full 16 KiB record, then the rest.
fn inflated(hs_len: usize) -> Vec<u8> {
    let base = Parts::openssl().with(EXT_PADDING, Vec::new()).hs().len();
    let hs = Parts::openssl()
        .with(EXT_PADDING, vec![0; hs_len - base])
        .hs();
    assert_eq!(hs.len(), hs_len);
    frame(&hs, 1 << 14)
}

#[test]
fn captured_hellos_give_their_name() {
    for (name, raw, want) in fixtures() {
        assert_eq!(inspect(&raw, BIG), want, "{name}");
        assert_eq!(
            inspect(&raw, raw.len()),
            want,
            "{name} with limit == its size"
        );
    }
    // The crafted PQ one is meant to be post-quantum sized.
    assert!((1200..=1800).contains(&fixture("openssl-pq.bin").len()));
}

#[test]
fn every_strict_prefix_is_incomplete() {
    let openssl = fixture("openssl-s_client.bin");
    let curl = fixture("curl.bin");
    let mut cases = fixtures();
    cases.push(("17 KB in two records", inflated(17_000), sni(DB)));
    for max in [1, 2, 3, 7, 100] {
        cases.push((
            "openssl in small records",
            frame(&handshake_of(&openssl), max),
            sni(DB),
        ));
    }
    cases.push((
        "curl in 5-byte records",
        frame(&handshake_of(&curl), 5),
        sni("web.example.test"),
    ));
    for (name, raw, want) in cases {
        for n in 0..raw.len() {
            assert_eq!(
                inspect(&raw[..n], BIG),
                Hello::Incomplete,
                "{name}: {n} bytes"
            );
        }
        assert_eq!(inspect(&raw, BIG), want, "{name}: whole");
    }
}

#[test]
fn big_hello_arrives_as_two_records_and_only_that_is_copied() {
    let raw = inflated(17_000);
    assert_eq!(raw[16_384 + 5], 22, "second record header where expected");
    assert_eq!(raw.len(), 17_000 + 10);
    assert_eq!(records::find(&raw, BIG), Ok(Found::Split { len: 17_000 }));
    let one = fixture("curl.bin");
    assert_eq!(records::find(&one, BIG), Ok(Found::Single(&one[5..])));
}

#[test]
fn bytes_after_the_hello_are_ignored() {
    let ccs_and_data: &[u8] = &[20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 2, 0xaa, 0xbb];
    for (name, mut raw, want) in [
        ("openssl", fixture("openssl-s_client.bin"), sni(DB)),
        ("17 KB", inflated(17_000), sni(DB)),
    ] {
        raw.extend_from_slice(ccs_and_data);
        assert_eq!(inspect(&raw, BIG), want, "{name}");
    }
}

#[test]
fn too_large() {
    let raw = fixture("openssl-s_client.bin");
    let n = raw.len();
    let big = inflated(17_000);
    let tiny = frame(&handshake_of(&raw), 1);
    let mut bad_past_limit = tiny[..12].to_vec();
    bad_past_limit[6] = 23;
    // (what, buffer, limit, verdict)
    let cases: Vec<(&str, &[u8], usize, Hello)> = vec![
        (
            "declared length over limit, known after 9 bytes",
            &raw[..9],
            n - 1,
            Hello::TooLarge,
        ),
        (
            "one byte short of the length: not known yet",
            &raw[..8],
            n - 1,
            Hello::Incomplete,
        ),
        ("whole hello, limit one short", &raw, n - 1, Hello::TooLarge),
        ("whole hello, limit exact", &raw, n, sni(DB)),
        (
            "17 KB hello, 16 KiB limit, after 9 bytes",
            &big[..9],
            16 * 1024,
            Hello::TooLarge,
        ),
        (
            "buffer reached limit before the length",
            &raw[..7],
            7,
            Hello::TooLarge,
        ),
        ("one under the limit", &raw[..6], 7, Hello::Incomplete),
        ("empty buffer, zero limit", &[], 0, Hello::TooLarge),
        (
            "1-byte records: header overhead counts",
            &tiny,
            tiny.len() - 1,
            Hello::TooLarge,
        ),
        ("1-byte records: exact limit", &tiny, tiny.len(), sni(DB)),
        (
            "1-byte records: buffer reached limit",
            &tiny[..12],
            12,
            Hello::TooLarge,
        ),
        (
            "1-byte records: under the limit",
            &tiny[..11],
            12,
            Hello::Incomplete,
        ),
        // The gateway may have read past the limit; what is there must not change the answer.
        (
            "bad record past the limit is unread",
            &bad_past_limit,
            6,
            Hello::TooLarge,
        ),
    ];
    for (what, buf, limit, want) in cases {
        assert_eq!(inspect(buf, limit), want, "{what}");
    }
}

#[test]
fn not_tls() {
    let raw = fixture("openssl-s_client.bin");
    let hs = handshake_of(&raw);
    let parts = Parts::openssl();

    let mut alert_mid_hello = frame(&hs, 100);
    alert_mid_hello[2 * 105] = 21;
    let mut ccs_mid_hello = frame(&hs, 100);
    ccs_mid_hello[105] = 20;

    let mut trailing = parts.fixed.clone();
    trailing.extend_from_slice(&be16(parts.ext_block().len()));
    trailing.extend_from_slice(&parts.ext_block());
    trailing.extend_from_slice(&[0xde, 0xad]);
    let trailing = frame(&Parts::message(&trailing), 1 << 14);

    // Extensions block claims 10 more bytes than the message holds.
    let mut short = parts.fixed.clone();
    short.extend_from_slice(&be16(parts.ext_block().len() + 10));
    short.extend_from_slice(&parts.ext_block());
    let short = frame(&Parts::message(&short), 1 << 14);

    // Last extension claims bytes past the end of the block.
    let mut cut = parts.hs();
    let block = parts.ext_block();
    let last_len_at = cut.len() - parts.exts.last().unwrap().1.len() - 2;
    let last_len = u16::from_be_bytes([cut[last_len_at], cut[last_len_at + 1]]);
    cut[last_len_at..last_len_at + 2].copy_from_slice(&(last_len + 4).to_be_bytes());
    assert!(!block.is_empty());
    let cut = frame(&cut, 1 << 14);

    let mut sslv2 = vec![
        0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    sslv2.resize(0x30, 7);

    let mut server_hello = hs.clone();
    server_hello[0] = 2;

    // (what, buffer): each is NotTls as given.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("HTTP, after one byte", b"G".to_vec()),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("0x16 then 0x00", vec![0x16, 0x00]),
        ("version 3.5", vec![22, 3, 5]),
        ("version 2.0", vec![22, 2, 0]),
        ("empty record", vec![22, 3, 1, 0, 0]),
        ("record over 2^14 + 2048", vec![22, 3, 1, 0x48, 0x01]),
        (
            "application data record",
            vec![23, 3, 3, 0, 5, 1, 2, 3, 4, 5],
        ),
        ("alert record", vec![21, 3, 3, 0, 2, 2, 40]),
        ("SSLv2-compatible hello", sslv2),
        (
            "ServerHello type, after 6 bytes",
            frame(&server_hello, 1 << 14)[..6].to_vec(),
        ),
        ("alert record mid-hello", alert_mid_hello),
        ("ChangeCipherSpec record mid-hello", ccs_mid_hello),
        ("garbage after the extensions", trailing),
        ("extensions block overruns the message", short),
        ("last extension overruns the block", cut),
        (
            "handshake header says empty hello",
            frame(&[1, 0, 0, 0], 16),
        ),
        (
            "hello body is garbage",
            frame(&[1, 0, 0, 6, 9, 9, 9, 9, 9, 9], 16),
        ),
    ];
    for (what, buf) in cases {
        assert_eq!(inspect(&buf, BIG), Hello::NotTls, "{what}");
    }
    // The early ones are not yet NotTls one byte earlier (the check is not spurious).
    assert_eq!(inspect(&[0x16], BIG), Hello::Incomplete);
    assert_eq!(inspect(&[22, 3, 4], BIG), Hello::Incomplete);
    assert_eq!(inspect(&[22, 3, 1, 0x48, 0x00], BIG), Hello::Incomplete);
}

#[test]
fn server_names() {
    let n253 =
        "a".repeat(63) + "." + &"b".repeat(63) + "." + &"c".repeat(63) + "." + &"d".repeat(61);
    assert_eq!(n253.len(), 253);
    let n254 = n253.clone() + "e";
    // (what, name bytes, verdict)
    let cases: Vec<(&str, Vec<u8>, Hello)> = vec![
        (
            "case preserved",
            b"DB.Example.COM".to_vec(),
            sni("DB.Example.COM"),
        ),
        (
            "underscore",
            b"_grpc.db.example".to_vec(),
            sni("_grpc.db.example"),
        ),
        ("one byte", b"a".to_vec(), sni("a")),
        ("253 bytes", n253.clone().into_bytes(), sni(&n253)),
        ("254 bytes", n254.into_bytes(), Hello::NotTls),
        ("empty", Vec::new(), Hello::NotTls),
        (
            "non-ASCII",
            "caf\u{e9}.example".as_bytes().to_vec(),
            Hello::NotTls,
        ),
        ("high byte", vec![b'a', 0xff, b'b'], Hello::NotTls),
        ("space", b"db example".to_vec(), Hello::NotTls),
        ("NUL", b"db\0.example".to_vec(), Hello::NotTls),
        ("slash", b"db/..".to_vec(), Hello::NotTls),
        ("wildcard", b"*.example".to_vec(), Hello::NotTls),
    ];
    for (what, name, want) in cases {
        assert_eq!(inspect(&with_name(&name), BIG), want, "{what}");
    }
}

#[test]
fn server_name_extension_shapes() {
    let dup = {
        let mut p = Parts::openssl();
        p.exts.push((EXT_SNI, sni_ext(&[(0, b"other.example")])));
        p.raw()
    };
    let list = |entries: &[(u8, &[u8])]| Parts::openssl().with(EXT_SNI, sni_ext(entries)).raw();
    let raw_ext = |data: Vec<u8>| Parts::openssl().with(EXT_SNI, data).raw();
    let mut longer_list = sni_ext(&[(0, b"a.example")]);
    longer_list[1] += 1;
    let mut trailing_in_ext = sni_ext(&[(0, b"a.example")]);
    trailing_in_ext.push(0);
    let mut entry_overruns = sni_ext(&[(0, b"a.example")]);
    entry_overruns[4] += 1;

    let cases: Vec<(&str, Vec<u8>, Hello)> = vec![
        (
            "other type first",
            list(&[(1, b"x"), (0, b"b.example")]),
            sni("b.example"),
        ),
        (
            "first host_name wins",
            list(&[(0, b"first"), (0, b"second")]),
            sni("first"),
        ),
        ("no host_name entry", list(&[(1, b"x")]), Hello::NoSni),
        ("empty list", list(&[]), Hello::NotTls),
        ("empty extension", raw_ext(Vec::new()), Hello::NotTls),
        (
            "list length past the data",
            raw_ext(longer_list),
            Hello::NotTls,
        ),
        (
            "bytes after the list",
            raw_ext(trailing_in_ext),
            Hello::NotTls,
        ),
        (
            "entry length past the list",
            raw_ext(entry_overruns),
            Hello::NotTls,
        ),
        ("two server_name extensions", dup, Hello::NotTls),
    ];
    for (what, raw, want) in cases {
        assert_eq!(inspect(&raw, BIG), want, "{what}");
    }
}

/// Only server_name's contents are judged: another extension, framed right but with contents
/// that do not parse (a signature_algorithms list longer than its data), is the backend's to
/// refuse.
#[test]
fn other_extensions_are_framed_not_judged() {
    let odd = Parts::openssl().with(13, vec![0, 10, 4, 3]).raw();
    assert_eq!(inspect(&odd, BIG), sni(DB));
}

#[test]
fn grease_ech_and_old_hellos() {
    let ech = (0..200u8).map(|i| i.wrapping_mul(37)).collect::<Vec<_>>();
    let modern = Parts::openssl()
        .with(0x0a0a, Vec::new())
        .with(0xfe0d, ech)
        .with(0xdada, vec![0])
        .raw();
    assert_eq!(inspect(&modern, BIG), sni(DB));

    let parts = Parts::openssl();
    let no_ext_block = frame(&Parts::message(&parts.fixed), 1 << 14);
    assert_eq!(inspect(&no_ext_block, BIG), Hello::NoSni);
    let empty_block = Parts {
        fixed: parts.fixed,
        exts: Vec::new(),
    }
    .raw();
    assert_eq!(inspect(&empty_block, BIG), Hello::NoSni);
}

#[test]
fn live_rustls_hello() {
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(API).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut raw = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut raw).unwrap();
    }
    assert_eq!(inspect(&raw, BIG), sni(API));
}

/// xorshift64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Once a verdict other than Incomplete is given it must not change as more bytes arrive
/// (the gateway acts on the first one), and a name handed out must be a routable one.
fn check_settles(buf: &[u8], limit: usize, cuts: impl IntoIterator<Item = usize>) -> Hello {
    let mut settled: Option<Hello> = None;
    for n in cuts.into_iter().chain([buf.len()]) {
        let v = inspect(&buf[..n], limit);
        if let Hello::Sni(name) = &v {
            let ok = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
            assert!(!name.is_empty() && name.bytes().all(ok), "{name:?}");
        }
        match &settled {
            Some(s) => assert_eq!(&v, s, "verdict changed at {n} bytes"),
            None if v != Hello::Incomplete => settled = Some(v),
            None => {}
        }
    }
    settled.unwrap_or(Hello::Incomplete)
}

#[test]
fn random_bytes_never_panic_and_settle() {
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    for i in 0..5000 {
        let len = rng.below(700);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Half of them get past the first header checks, to reach the deeper code.
        if i % 2 == 0 && len >= 6 {
            buf[..3].copy_from_slice(&[22, 3, 1]);
            buf[5] = 1;
        }
        let limit = [BIG, 64, 300, len][rng.below(4)];
        let v = check_settles(&buf, limit, 0..buf.len());
        if buf.first().is_some_and(|&b| b != 22) && limit > 0 {
            assert_eq!(v, Hello::NotTls, "first byte {:#x}", buf[0]);
        }
    }
}

#[test]
fn mutated_hellos_never_panic_and_settle() {
    let bases: Vec<Vec<u8>> = fixtures().into_iter().map(|(_, raw, _)| raw).collect();
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut names = 0;
    for _ in 0..3000 {
        let mut buf = bases[rng.below(bases.len())].clone();
        if rng.below(3) == 0 {
            buf = frame(&handshake_of(&buf), 1 + rng.below(64));
        }
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(buf.len());
            match rng.below(3) {
                0 => buf[at] ^= 1 << rng.below(8),
                1 => buf[at] = rng.next() as u8,
                _ => buf.truncate(at.max(1)),
            }
        }
        let cuts: Vec<usize> = (0..16).map(|_| rng.below(buf.len())).collect();
        let mut cuts = cuts;
        cuts.sort_unstable();
        let limit = [BIG, BIG, buf.len() / 2, rng.below(buf.len() + 1)][rng.below(4)];
        if matches!(check_settles(&buf, limit, cuts), Hello::Sni(_)) {
            names += 1;
        }
    }
    // Flips in key shares or ciphers leave the name intact: the loop reached the parser.
    assert!(names > 100, "only {names} mutated hellos parsed");
}
