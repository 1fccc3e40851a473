//! What every fuzz input must satisfy, shared by the fuzz targets (tests/fuzz/fuzz_targets)
//! and by `tests/inputs/fuzz_corpus.rs`, which replays the committed corpus and crash
//! reproducers through the same checks in every `cargo test`.
//!
//! A check panics when an invariant breaks; the fuzzer reports that panic as a crash.

use std::path::Path;

use sidegate::client_hello::{self, Hello, MAX_NAME};

/// Hello limits worth comparing: below a record header, around the smallest and usual
/// hellos, the configurable range's ends.
pub const LIMITS: [usize; 9] = [0, 1, 5, 9, 64, 512, 1024, 32_768, 1 << 20];

/// `client_hello::inspect` on one byte stream under every limit in [`LIMITS`].
pub fn hello(data: &[u8]) {
    let verdicts = LIMITS.map(|limit| client_hello::inspect(data, limit));
    for (&limit, verdict) in LIMITS.iter().zip(&verdicts) {
        sane(data, limit, verdict);
        // Only the first `limit` bytes may decide (the gateway reads no further).
        let seen = &data[..data.len().min(limit)];
        assert_eq!(
            &client_hello::inspect(seen, limit),
            verdict,
            "verdict depends on bytes past limit {limit}"
        );
    }
    // A final verdict under a small budget stays the same under any larger one.
    for (i, small) in verdicts.iter().enumerate() {
        if final_routing(small) {
            for (large, limit) in verdicts[i..].iter().zip(&LIMITS[i..]) {
                assert_eq!(
                    large, small,
                    "verdict changed when the limit grew to {limit}"
                );
            }
        }
    }
}

/// `data` delivered in segments whose sizes the first two bytes choose (as TCP would cut it),
/// under a limit the third byte chooses; when the hello is whole, also re-framed into
/// records of a chosen size (as a client may split a large hello).
pub fn hello_split(input: &[u8]) {
    let mut ctl = Bytes::new(input);
    let (seed, max_segment) = (ctl.byte(), usize::from(ctl.byte()) + 1);
    let limit = LIMITS[ctl.below(LIMITS.len())];
    let data = ctl.rest();
    let whole = client_hello::inspect(data, limit);
    sane(data, limit, &whole);

    // Every cut the gateway could see: Incomplete until a verdict, and that verdict is final.
    let mut rng = seed;
    let mut at = 0;
    let mut decided: Option<(usize, Hello)> = None;
    while at < data.len() {
        rng = rng.wrapping_mul(181).wrapping_add(59);
        at = (at + 1 + usize::from(rng) % max_segment).min(data.len());
        let verdict = client_hello::inspect(&data[..at], limit);
        sane(&data[..at], limit, &verdict);
        match &decided {
            Some((when, first)) => {
                assert_eq!(&verdict, first, "verdict at {when} bytes changed at {at}")
            }
            None if verdict != Hello::Incomplete => decided = Some((at, verdict)),
            None => {}
        }
    }
    if let Some((_, first)) = &decided {
        assert_eq!(first, &whole, "segmented delivery ended differently");
    }

    // The same hello in records of another size reads the same.
    if matches!(whole, Hello::Sni(_) | Hello::NoSni) {
        let fragment = usize::from(seed) % 300 + 1;
        let message = handshake_message(data);
        let reframed = frame(&message, fragment);
        assert_eq!(
            client_hello::inspect(&reframed, 1 << 20),
            whole,
            "the hello re-framed in {fragment}-byte records reads differently"
        );
    }
}

/// A verdict the gateway acts on for good (everything but `Incomplete`/`TooLarge`, which
/// depend on how much was allowed).
fn final_routing(v: &Hello) -> bool {
    matches!(v, Hello::Sni(_) | Hello::NoSni | Hello::NotTls)
}

/// What any verdict must respect, whatever the bytes.
fn sane(data: &[u8], limit: usize, verdict: &Hello) {
    match verdict {
        Hello::Sni(name) => {
            let name = name.as_bytes();
            assert!(
                !name.is_empty() && name.len() <= MAX_NAME,
                "SNI of {} bytes",
                name.len()
            );
            assert!(
                name.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
                "SNI is not a host name: {name:?}"
            );
            let payload = handshake_payload(data);
            assert!(
                payload.windows(name.len()).any(|w| w == name),
                "SNI {name:?} is not in the hello's bytes"
            );
        }
        Hello::NoSni => {}
        Hello::Incomplete => assert!(
            data.len() < limit,
            "Incomplete with {} bytes under limit {limit}",
            data.len()
        ),
        Hello::NotTls => assert!(!data.is_empty(), "empty input is not NotTls"),
        Hello::TooLarge => {}
    }
}

fn record_len(data: &[u8], pos: usize) -> Option<usize> {
    let h = data.get(pos..pos + 5)?;
    (h[0] == 22).then(|| usize::from(u16::from_be_bytes([h[3], h[4]])))
}

/// The handshake bytes of the leading handshake records, concatenated.
fn handshake_payload(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(len) = record_len(data, pos) {
        let end = (pos + 5 + len).min(data.len());
        out.extend_from_slice(&data[pos + 5..end]);
        pos += 5 + len;
    }
    out
}

/// The first handshake message (header included), as far as the records carry it.
fn handshake_message(data: &[u8]) -> Vec<u8> {
    let mut payload = handshake_payload(data);
    if let [_, a, b, c, ..] = payload[..] {
        let len = 4 + u32::from_be_bytes([0, a, b, c]) as usize;
        payload.truncate(len);
    }
    payload
}

/// Handshake bytes framed into handshake records of at most `max` bytes each.
pub fn frame(message: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / max * 5 + 5);
    for chunk in message.chunks(max) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Configuration text as an operator might write it; file names relative to `base`.
pub fn config_text(data: &[u8], base: &Path) {
    config(&String::from_utf8_lossy(data), base);
}

/// Validating `text` never panics, is deterministic, and either lists errors or gives a
/// configuration whose plan renders and routes each of its own routes' names.
pub fn config(text: &str, base: &Path) {
    // No environment: `[consul]` defaults from CONSUL_HTTP_* would make runs differ.
    let first = sidegate::config::parse_in(text, base, &|_| None);
    let again = sidegate::config::parse_in(text, base, &|_| None);
    assert!(first == again, "the same text validated differently");
    match first {
        Err(errors) => {
            assert!(!errors.is_empty(), "rejected without an error");
            for e in errors {
                assert!(
                    !e.message.is_empty(),
                    "error at {:?} without a message",
                    e.path
                );
                assert!(!e.to_string().is_empty());
            }
        }
        Ok(config) => plan_sane(&config),
    }
}

fn plan_sane(config: &sidegate::config::Config) {
    use sidegate::mesh::routes::RouteKind;
    let plan = sidegate::mesh::plan(&config.snapshot);
    serde_json::to_string(&plan).expect("the plan renders as JSON");
    let _ = sidegate::mesh::plan::describe(&plan);
    let Some(gw) = &plan.gateway else { return };
    let here = &config.snapshot.here;
    for route in gw.routes.routes() {
        let name = match route.pattern.strip_prefix("*.") {
            Some(suffix) => format!("x.{suffix}"),
            None => route.pattern.to_owned(),
        };
        if name.len() > MAX_NAME {
            continue; // no client can send it (see the report on long trust domains)
        }
        let (found, _) = gw
            .routes
            .lookup(&name)
            .unwrap_or_else(|| panic!("{name} is not routed by its own route"));
        if route.kind == RouteKind::Service {
            assert_eq!(found.pattern, route.pattern);
        }
        sidegate::mesh::explain::explain(gw, here, &name)
            .unwrap_or_else(|why| panic!("explain {name}: {why}"));
    }
    let _ = sidegate::mesh::explain::explain(gw, here, "nothing.example");
}

/// A valid configuration changed by edits the input chooses, as TOML text. `bases` are
/// (text, directory its file names are relative to).
pub fn config_edit(input: &[u8], bases: &[(String, std::path::PathBuf)]) {
    let mut ctl = Bytes::new(input);
    let (text, dir) = &bases[ctl.below(bases.len())];
    let mut doc: toml::Table = text.parse().expect("a base configuration is valid TOML");
    for _ in 0..=ctl.below(4) {
        edit(&mut doc, &mut ctl);
    }
    config(&emit(&doc), dir);
}

/// Reads choices from fuzz bytes; past the end every choice is 0.
pub struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes(data)
    }

    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        let x = usize::from(u16::from_be_bytes([self.byte(), self.byte()]));
        x.checked_rem(n).unwrap_or(0)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }
}

/// Keys of the configuration (config/README.md) and near misses, so edits land where the reader looks.
const KEYS: &[&str] = &[
    "mesh",
    "datacenter",
    "partition",
    "namespace",
    "trust_domain",
    "gateway",
    "listen",
    "connect_timeout_ms",
    "handshake_timeout_ms",
    "idle_timeout_ms",
    "max_connections",
    "max_client_hello_bytes",
    "splice",
    "catalog",
    "services",
    "gateways",
    "name",
    "instances",
    "lan",
    "wan",
    "tls",
    "cert_file",
    "key_file",
    "ca_file",
    "sidecar",
    "service",
    "public_listener",
    "local_service_address",
    "local_connect_timeout_ms",
    "mesh_gateway",
    "mode",
    "intentions",
    "default",
    "rules",
    "source",
    "source_namespace",
    "source_partition",
    "action",
    "upstreams",
    "destination_name",
    "destination_namespace",
    "destination_partition",
    "local_bind_address",
    "local_bind_port",
    "local_bind_socket_path",
    "local_bind_socket_mode",
    "config_entries",
    "proxy_defaults",
    "service_defaults",
    "upstream_config",
    "defaults",
    "overrides",
    "service_resolvers",
    "default_subset",
    "subsets",
    "filter",
    "only_passing",
    "redirect",
    "failover",
    "datacenters",
    "targets",
    "service_subset",
    "connect_timeout",
    "address",
    "meta",
    "tags",
    "health",
    "node",
    "node_meta",
    "protocol",
    "consul",
    "admin",
    "lisen",
    "",
    "web",
    "db",
];

const STRINGS: &[&str] = &[
    "",
    "db",
    "web",
    "-db",
    "DB",
    "a.b",
    "*",
    "none",
    "local",
    "remote",
    "allow",
    "deny",
    "0600",
    "0777",
    "1000",
    "0o644",
    "0.0.0.0:0",
    "127.0.0.1:0",
    "127.0.0.1:8443",
    "[::1]:8443",
    "::1",
    "10.0.0.5",
    "10.0.0.5:0",
    "10.0.0.5:65536",
    "host:21000",
    "host:",
    ":21000",
    "-host:1",
    "a..b:1",
    "ü:1",
    "dc1",
    "dc2",
    "part2",
    "ap1",
    "default",
    "11111111-2222-3333-4444-555555555555.consul",
    "td.consul",
    "TD.consul",
    "consul",
    "web.pem",
    "web-key-sec1.pem",
    "web-key-pkcs8.pem",
    "db.pem",
    "db-key-pkcs1.pem",
    "ca.pem",
    "nospiffe.pem",
    "nospiffe-key.pem",
    "missing.pem",
    ".",
    "/",
    "/tmp/sidegate-fuzz.sock",
    "a\u{0}b",
    "line\nbreak",
];

const INTS: &[i64] = &[
    0,
    1,
    -1,
    2,
    1023,
    1024,
    4096,
    65_535,
    65_536,
    86_400_000,
    86_400_001,
    1_000_000,
    1_000_001,
    1_048_576,
    1_048_577,
    i64::MAX,
    i64::MIN,
];

fn key(ctl: &mut Bytes<'_>) -> String {
    if ctl.byte() % 4 == 0 {
        let len = usize::from(ctl.byte() % 12);
        String::from_utf8_lossy(ctl.take(len)).into_owned()
    } else {
        KEYS[ctl.below(KEYS.len())].to_owned()
    }
}

fn value(ctl: &mut Bytes<'_>, depth: u8) -> toml::Value {
    use toml::Value;
    // Containers only while depth remains.
    let kinds = if depth == 0 { 6 } else { 8 };
    match ctl.byte() % kinds {
        0 => Value::String(STRINGS[ctl.below(STRINGS.len())].to_owned()),
        1 => Value::String(match ctl.byte() {
            0..=200 => {
                let len = usize::from(ctl.byte() % 40);
                String::from_utf8_lossy(ctl.take(len)).into_owned()
            }
            // Longer than any name or SNI may be.
            n => "a".repeat(250 + usize::from(n)),
        }),
        2 => Value::Integer(INTS[ctl.below(INTS.len())]),
        3 => Value::Integer(i64::from(ctl.byte()) * 257 - 1000),
        4 => Value::Boolean(ctl.byte() % 2 == 0),
        5 => Value::Float([0.5, -0.0, f64::NAN, f64::INFINITY, 1e300][ctl.below(5)]),
        6 => Value::Array((0..ctl.byte() % 4).map(|_| value(ctl, depth - 1)).collect()),
        _ => Value::Table(
            (0..ctl.byte() % 3)
                .map(|_| (key(ctl), value(ctl, depth - 1)))
                .collect(),
        ),
    }
}

/// One step from a container to an element.
#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every element's path, parents before children.
fn paths(table: &toml::Table) -> Vec<Vec<Step>> {
    fn walk(v: &toml::Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        let children: Vec<(Step, &toml::Value)> = match v {
            toml::Value::Table(t) => t.iter().map(|(k, v)| (Step::Key(k.clone()), v)).collect(),
            toml::Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (Step::Index(i), v))
                .collect(),
            _ => return,
        };
        for (step, child) in children {
            at.push(step);
            out.push(at.clone());
            walk(child, at, out);
            at.pop();
        }
    }
    let mut out = Vec::new();
    walk(
        &toml::Value::Table(table.clone()),
        &mut Vec::new(),
        &mut out,
    );
    out
}

fn get_mut<'v>(root: &'v mut toml::Value, path: &[Step]) -> Option<&'v mut toml::Value> {
    path.iter().try_fold(root, |v, step| match (v, step) {
        (toml::Value::Table(t), Step::Key(k)) => t.get_mut(k),
        (toml::Value::Array(a), Step::Index(i)) => a.get_mut(*i),
        _ => None,
    })
}

/// One edit: delete, replace, add, duplicate, rename or transplant an element.
fn edit(doc: &mut toml::Table, ctl: &mut Bytes<'_>) {
    let all = paths(doc);
    let mut root = toml::Value::Table(std::mem::take(doc));
    let op = ctl.byte() % 6;
    let target = all.get(ctl.below(all.len())).cloned().unwrap_or_default();
    let (parent_path, last) = match target.split_last() {
        Some((last, parent)) => (parent.to_vec(), Some(last.clone())),
        None => (Vec::new(), None),
    };
    let moved = get_mut(&mut root, &target).map(|v| v.clone());
    let fresh = value(ctl, 2);
    let new_key = key(ctl);
    if let Some(parent) = get_mut(&mut root, &parent_path) {
        match (op, parent, last) {
            (0, toml::Value::Table(t), Some(Step::Key(k))) => {
                t.remove(&k);
            }
            (0, toml::Value::Array(a), Some(Step::Index(i))) => {
                a.remove(i);
            }
            (1, toml::Value::Table(t), Some(Step::Key(k))) => {
                t.insert(k, fresh);
            }
            (1, toml::Value::Array(a), Some(Step::Index(i))) => a[i] = fresh,
            (2, toml::Value::Table(t), _) => {
                t.insert(new_key, fresh);
            }
            (3, toml::Value::Array(a), Some(Step::Index(i))) => a.insert(i, a[i].clone()),
            (4, toml::Value::Table(t), Some(Step::Key(k))) => {
                if let Some(v) = t.remove(&k) {
                    t.insert(new_key, v);
                }
            }
            (5, _, _) => {
                // Transplant the element into a table elsewhere (e.g. a catalog in [gateway]).
                let to = all.get(ctl.below(all.len())).cloned().unwrap_or_default();
                if let (Some(toml::Value::Table(t)), Some(v)) = (get_mut(&mut root, &to), moved) {
                    t.insert(new_key, v);
                }
            }
            _ => {}
        }
    }
    if let toml::Value::Table(t) = root {
        *doc = t;
    }
}

/// TOML text for a document: one `"key" = value` line per top-level key, nested values inline.
pub fn emit(doc: &toml::Table) -> String {
    let mut out = String::new();
    for (k, v) in doc {
        emit_str(&mut out, k);
        out.push_str(" = ");
        emit_value(&mut out, v);
        out.push('\n');
    }
    out
}

fn emit_value(out: &mut String, v: &toml::Value) {
    use toml::Value;
    match v {
        Value::String(s) => emit_str(out, s),
        Value::Integer(n) => out.push_str(&n.to_string()),
        Value::Float(f) if f.is_nan() => out.push_str("nan"),
        Value::Float(f) if f.is_infinite() => out.push_str(if *f > 0.0 { "inf" } else { "-inf" }),
        Value::Float(f) => out.push_str(&format!("{f:?}")),
        Value::Boolean(b) => out.push_str(&b.to_string()),
        Value::Datetime(d) => out.push_str(&d.to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                emit_value(out, item);
            }
            out.push(']');
        }
        Value::Table(t) => {
            out.push('{');
            for (i, (k, item)) in t.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { " " });
                emit_str(out, k);
                out.push_str(" = ");
                emit_value(out, item);
            }
            out.push_str(" }");
        }
    }
}

fn emit_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The configurations `config_edit` starts from: every example under config/ and the
/// fuzz bases (all sections at once), each with the directory its file names are relative to.
pub fn bases(repo: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    for (dir, files_in) in [
        (repo.join("config"), repo.join("config")),
        (
            repo.join("tests/fuzz/bases"),
            repo.join("tests/fixtures/tls"),
        ),
    ] {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        names.sort();
        for p in names {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((text, files_in.clone()));
        }
    }
    out
}
