//! SPIFFE IDs as Consul CE renders and parses them (agent/connect/uri.go, uri_service.go,
//! uri_service_ce.go, uri_agent_ce.go, uri_mesh_gateway_ce.go, uri_server.go, uri_signing.go).
//!
//! A sidecar sees these as the URI SAN of every peer certificate, so parsing runs on hostile
//! input: it is linear, bounded in the number of path segments it looks at, and never panics.
//!
//! Consul parses with Go's `url.Parse` and then `ParseCertURI`. We re-do by hand the parts of
//! `url.Parse` that decide what Consul accepts: scheme (lower-cased), authority (userinfo
//! dropped, host kept verbatim including a port), query and fragment ignored, control bytes and
//! invalid `%` escapes refused. Deliberate deviations, all stricter: any `%` in the host is
//! refused (Go allows `%80`–`%FF` there), and decoded segments must be UTF-8 (Go strings are
//! bytes).

use std::fmt;

/// A Consul identity. `trust_domain` is the URI host verbatim (Consul's `Host` field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiffeId {
    /// `spiffe://<td>[/ap/<partition>]/ns/<namespace>/dc/<dc>/svc/<service>`
    Service {
        trust_domain: String,
        partition: String,
        namespace: String,
        datacenter: String,
        service: String,
    },
    /// `spiffe://<td>[/ap/<partition>]/agent/client/dc/<dc>/id/<node-id>` (client agent)
    Agent {
        trust_domain: String,
        partition: String,
        datacenter: String,
        agent: String,
    },
    /// `spiffe://<td>/agent/server/dc/<dc>`
    Server {
        trust_domain: String,
        datacenter: String,
    },
    /// `spiffe://<td>[/ap/<partition>]/gateway/mesh/dc/<dc>`
    MeshGateway {
        trust_domain: String,
        partition: String,
        datacenter: String,
    },
    /// `spiffe://<cluster-id>.<domain>`: the CA's own ID, i.e. the trust domain.
    Signing { cluster_id: String, domain: String },
}

/// Why a URI is not a Consul SPIFFE ID. Values are clipped to 64 bytes because these end up
/// in the log line of a refused connection and the input is whatever the peer put in its cert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiffeError {
    /// Scheme is not `spiffe` (empty when the URI has no valid scheme at all).
    Scheme { got: String },
    /// An ASCII control byte, which Go's `url.Parse` refuses anywhere in a URL.
    ControlByte { at: usize },
    /// `%` not followed by two hex digits, in the named part of the URI.
    BadEscape { part: &'static str, escape: String },
    /// A captured segment whose percent-decoded bytes are not UTF-8.
    NotUtf8 { part: &'static str },
    /// The authority's host (trust domain), port or userinfo is not what `url.Parse` accepts.
    BadAuthority {
        authority: String,
        reason: &'static str,
    },
    /// `spiffe:<opaque>`: no `//` authority and no absolute path.
    Opaque,
    /// Well-formed URI whose path is none of Consul's shapes.
    UnknownPath { path: String },
    /// Empty path (signing ID) but the host has no `<cluster-id>.` before a dot.
    SigningHost { host: String },
}

impl fmt::Display for SpiffeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Scheme { got } if got.is_empty() => {
                f.write_str("scheme must be spiffe, got no scheme")
            }
            Self::Scheme { got } => write!(f, "scheme must be spiffe, got {got}"),
            Self::ControlByte { at } => write!(f, "control byte at offset {at} in SPIFFE ID"),
            Self::BadEscape { part, escape } => {
                write!(f, "invalid percent-escape {escape:?} in SPIFFE ID {part}")
            }
            Self::NotUtf8 { part } => {
                write!(f, "SPIFFE ID {part} is not UTF-8 after percent-decoding")
            }
            Self::BadAuthority { authority, reason } => {
                write!(f, "invalid SPIFFE ID authority {authority:?}: {reason}")
            }
            Self::Opaque => f.write_str("SPIFFE ID must be spiffe://<trust-domain>[/<path>]"),
            Self::UnknownPath { path } => write!(
                f,
                "SPIFFE ID path {path:?} is not a Consul identity (expected [/ap/<p>]/ns/<ns>/dc/<dc>/svc/<svc>, [/ap/<p>]/agent/client/dc/<dc>/id/<id>, [/ap/<p>]/gateway/mesh/dc/<dc> or /agent/server/dc/<dc>)"
            ),
            Self::SigningHost { host } => write!(
                f,
                "SPIFFE signing ID host {host:?} is not <cluster-id>.<domain>"
            ),
        }
    }
}

impl std::error::Error for SpiffeError {}

/// At most 64 bytes of `s` (on a char boundary), for error messages.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl SpiffeId {
    /// A service identity, the SAN of every sidecar leaf certificate.
    pub fn service(
        trust_domain: &str,
        partition: &str,
        namespace: &str,
        datacenter: &str,
        service: &str,
    ) -> SpiffeId {
        SpiffeId::Service {
            trust_domain: trust_domain.to_owned(),
            partition: partition.to_owned(),
            namespace: namespace.to_owned(),
            datacenter: datacenter.to_owned(),
            service: service.to_owned(),
        }
    }

    /// The signing ID of a Consul CA: the domain is always the literal `consul`, not the
    /// agent's DNS domain (uri_signing.go `SpiffeIDSigningForCluster`).
    pub fn signing_for_cluster(cluster_id: &str) -> SpiffeId {
        SpiffeId::Signing {
            cluster_id: cluster_id.to_owned(),
            domain: "consul".to_owned(),
        }
    }

    /// `ParseCertURI(url.Parse(uri))` (uri.go `ParseCertURIFromString`).
    pub fn parse(uri: &str) -> Result<SpiffeId, SpiffeError> {
        if let Some(at) = uri.bytes().position(|b| b < 0x20 || b == 0x7f) {
            return Err(SpiffeError::ControlByte { at });
        }
        // url.Parse: the fragment goes first; its escapes must still be valid.
        let (rest, fragment) = uri.split_once('#').unwrap_or((uri, ""));
        unescape(fragment, "fragment")?;
        let (scheme, rest) = split_scheme(rest);
        // Go lower-cases the scheme, so "SPIFFE://" passes Consul's `Scheme != "spiffe"`.
        if !scheme.eq_ignore_ascii_case("spiffe") {
            return Err(SpiffeError::Scheme { got: clip(scheme) });
        }
        // The query is split off and never looked at by ParseCertURI.
        let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
        let (host, path) = if let Some(after) = rest.strip_prefix("//") {
            let end = after.find('/').unwrap_or(after.len());
            (parse_authority(&after[..end])?, &after[end..])
        } else if rest.starts_with('/') {
            // "spiffe:/ns/..." has a path but no host; Go (and so Consul) accepts it with
            // Host "", which no trust-domain check will then match.
            ("", rest)
        } else {
            return Err(SpiffeError::Opaque);
        };
        // url.Parse refuses the whole URI on a bad escape anywhere in the path, before
        // ParseCertURI's regexes run.
        unescape(path, "path")?;
        if path.is_empty() {
            // Signing ID: host split at the first dot, which must not be the first byte.
            return match host.split_once('.') {
                Some((id, domain)) if !id.is_empty() => Ok(SpiffeId::Signing {
                    cluster_id: id.to_owned(),
                    domain: domain.to_owned(),
                }),
                _ => Err(SpiffeError::SigningHost { host: clip(host) }),
            };
        }
        match_path(host, path)?.ok_or_else(|| SpiffeError::UnknownPath { path: clip(path) })
    }

    /// Whether this signing ID (a CA's trust domain) may sign a certificate for `other`
    /// (uri_signing.go `CanSign`). Only a `Signing` ID signs anything. Service, mesh-gateway
    /// and server IDs need their host equal to the signer's host under case folding; another
    /// signing ID needs an equal URI (whose host Consul lower-cases). Client-agent IDs are
    /// never signable as-is: the server rewrites their host first (leader_connect_ca.go).
    pub fn can_sign(&self, other: &SpiffeId) -> bool {
        let Some(signer) = self.signing_host() else {
            return false;
        };
        match other {
            SpiffeId::Signing { .. } => other.signing_host().as_deref() == Some(&signer),
            SpiffeId::Service { trust_domain, .. }
            | SpiffeId::MeshGateway { trust_domain, .. }
            | SpiffeId::Server { trust_domain, .. } => trust_domain.to_lowercase() == signer,
            SpiffeId::Agent { .. } => false,
        }
    }

    /// `SpiffeIDSigning.Host()`: `<cluster-id>.<domain>`, lower-cased (Go `strings.ToLower`,
    /// which differs from Rust's `to_lowercase` only for a few non-ASCII letters).
    fn signing_host(&self) -> Option<String> {
        match self {
            SpiffeId::Signing { cluster_id, domain } => {
                Some(format!("{cluster_id}.{domain}").to_lowercase())
            }
            _ => None,
        }
    }
}

/// Go `getScheme`: `[A-Za-z][A-Za-z0-9+.-]*` before the first `:`; anything else means the
/// URI has no scheme (Consul then fails the scheme check).
fn split_scheme(s: &str) -> (&str, &str) {
    let Some((scheme, rest)) = s.split_once(':') else {
        return ("", s);
    };
    let mut bytes = scheme.bytes();
    let valid = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if valid {
        (scheme, rest)
    } else {
        ("", s)
    }
}

/// Go `parseAuthority`/`parseHost`, reduced to what decides acceptance: userinfo (after the
/// last `@`) is validated and dropped, the host keeps its `:port`, which must be digits.
fn parse_authority(authority: &str) -> Result<&str, SpiffeError> {
    let bad = |reason| SpiffeError::BadAuthority {
        authority: clip(authority),
        reason,
    };
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let ok = userinfo.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b >= 0x80 || b"-._:~!$&'()*+,;=%@".contains(&b)
            });
            if !ok {
                return Err(bad("invalid character in userinfo"));
            }
            unescape(userinfo, "userinfo")?;
            host
        }
        None => authority,
    };
    // Host bytes url.Parse accepts unescaped (shouldEscape(encodeHost) is false) plus
    // non-ASCII; `%` is refused outright (stricter than Go, see the module comment).
    let host_byte =
        |b: u8| b.is_ascii_alphanumeric() || b >= 0x80 || b"-._~!$&'()*+,;=:[]<>\"".contains(&b);
    if !host.bytes().all(host_byte) {
        return Err(bad("invalid character in host"));
    }
    let port = if let Some(bracketed) = host.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((_, after)) if after.is_empty() || after.starts_with(':') => after,
            Some(_) => return Err(bad("junk after ']' in host")),
            None => return Err(bad("missing ']' in host")),
        }
    } else {
        host.rfind(':').map_or("", |i| &host[i..])
    };
    if !port.bytes().skip(1).all(|b| b.is_ascii_digit()) {
        return Err(bad("port is not a number"));
    }
    Ok(host)
}

/// Value of one hex digit.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Go `url.PathUnescape`: `%XX` becomes byte XX; `+` stays `+`; a `%` without two hex digits
/// after it is an error.
fn unescape(s: &str, part: &'static str) -> Result<Vec<u8>, SpiffeError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).copied().and_then(hex);
        let lo = bytes.get(i + 2).copied().and_then(hex);
        match (hi, lo) {
            (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
            _ => {
                let end = s.len().min(i + 3);
                // `get` so that a multi-byte char right after '%' cannot split a char.
                let escape = s.get(i..end).unwrap_or("%").to_owned();
                return Err(SpiffeError::BadEscape { part, escape });
            }
        }
        i += 3;
    }
    Ok(out)
}

/// A captured path segment, percent-decoded (ParseCertURI decodes after matching).
fn decode(segment: &str, part: &'static str) -> Result<String, SpiffeError> {
    String::from_utf8(unescape(segment, part)?).map_err(|_| SpiffeError::NotUtf8 { part })
}

/// Matches `segs` against `pattern`, where `"*"` stands for a regex `([^/]+)`: a non-empty
/// segment (splitting on '/' already keeps '/' out). Returns the captures in order.
fn captures<'a, const N: usize>(segs: &[&'a str], pattern: &[&str]) -> Option<[&'a str; N]> {
    if segs.len() != pattern.len() {
        return None;
    }
    let mut caps = [""; N];
    let mut n = 0;
    for (seg, pat) in segs.iter().zip(pattern) {
        if *pat == "*" {
            if seg.is_empty() {
                return None;
            }
            *caps.get_mut(n)? = seg;
            n += 1;
        } else if seg != pat {
            return None;
        }
    }
    (n == N).then_some(caps)
}

/// `captures` behind the optional `(?:/ap/([^/]+))?` prefix of the service, agent and
/// mesh-gateway regexes. The patterns start with a literal other than `ap`, so trying the
/// prefixed form first gives the same answer as the regex.
fn captures_ap<'a, const N: usize>(
    segs: &[&'a str],
    pattern: &[&str],
) -> Option<(Option<&'a str>, [&'a str; N])> {
    if let [ap_lit, ap, rest @ ..] = segs {
        if *ap_lit == "ap" && !ap.is_empty() {
            if let Some(caps) = captures(rest, pattern) {
                return Some((Some(ap), caps));
            }
        }
    }
    captures(segs, pattern).map(|caps| (None, caps))
}

/// A missing `/ap/` means the default partition (ParseCertURI).
fn partition(ap: Option<&str>) -> Result<String, SpiffeError> {
    ap.map_or(Ok("default".to_owned()), |ap| decode(ap, "admin partition"))
}

/// ParseCertURI's regexes, in its order: service, agent, mesh gateway, server; on the raw
/// (still percent-encoded) path, so an encoded `/` stays inside its segment.
fn match_path(host: &str, path: &str) -> Result<Option<SpiffeId>, SpiffeError> {
    // The longest shape has 8 segments; looking at a 9th is enough to reject longer paths, so
    // a path of a million slashes costs no more than a short one.
    let Some(segs) = path.strip_prefix('/') else {
        return Ok(None);
    };
    let segs: Vec<&str> = segs.split('/').take(9).collect();
    let trust_domain = host.to_owned();
    if let Some((ap, [ns, dc, svc])) = captures_ap(&segs, &["ns", "*", "dc", "*", "svc", "*"]) {
        return Ok(Some(SpiffeId::Service {
            trust_domain,
            partition: partition(ap)?,
            namespace: decode(ns, "namespace")?,
            datacenter: decode(dc, "datacenter")?,
            service: decode(svc, "service")?,
        }));
    }
    if let Some((ap, [dc, id])) = captures_ap(&segs, &["agent", "client", "dc", "*", "id", "*"]) {
        return Ok(Some(SpiffeId::Agent {
            trust_domain,
            partition: partition(ap)?,
            datacenter: decode(dc, "datacenter")?,
            agent: decode(id, "node")?,
        }));
    }
    if let Some((ap, [dc])) = captures_ap(&segs, &["gateway", "mesh", "dc", "*"]) {
        return Ok(Some(SpiffeId::MeshGateway {
            trust_domain,
            partition: partition(ap)?,
            datacenter: decode(dc, "datacenter")?,
        }));
    }
    if let Some([dc]) = captures(&segs, &["agent", "server", "dc", "*"]) {
        return Ok(Some(SpiffeId::Server {
            trust_domain,
            datacenter: decode(dc, "datacenter")?,
        }));
    }
    Ok(None)
}

/// Go's `escape` for `url.URL.String()`: what `URI().String()` does to the host and path.
/// Kept unescaped: ASCII alphanumerics, `-_.~`, and per part the characters Go leaves alone
/// (path: `$&+,/:;=@`; host: `!$&'()*+,;=:[]<>"`). Everything else, including every non-ASCII
/// byte, becomes `%XX` with upper-case hex. Note that `/` inside a value is not escaped: Consul
/// renders service "a/b" as `.../svc/a/b`, which does not parse back, and so do we.
fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str, host: bool) -> fmt::Result {
    let keep: &[u8] = if host {
        b"-_.~!$&'()*+,;=:[]<>\""
    } else {
        b"-_.~$&+,/:;=@"
    };
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            fmt::Write::write_char(f, char::from(b))?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

/// The URI exactly as Consul CE's `URI().String()` renders it. CE quirks kept on purpose:
/// the namespace always renders as `default` (acl.NamespaceOrDefault ignores its argument in
/// CE); a service partition renders lower-cased as `/ap/<p>` unless it is empty or `default`
/// (uri_service_ce.go, kept for peering with Enterprise); agent and mesh-gateway IDs never
/// render `/ap/` (uri_agent_ce.go, uri_mesh_gateway_ce.go); the signing host is lower-cased.
impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("spiffe://")?;
        if let Some(host) = self.signing_host() {
            return write_escaped(f, &host, true);
        }
        let (SpiffeId::Service { trust_domain, .. }
        | SpiffeId::Agent { trust_domain, .. }
        | SpiffeId::Server { trust_domain, .. }
        | SpiffeId::MeshGateway { trust_domain, .. }) = self
        else {
            return Ok(());
        };
        write_escaped(f, trust_domain, true)?;
        let mut path = String::new();
        match self {
            SpiffeId::Service {
                partition,
                datacenter,
                service,
                ..
            } => {
                let ap = partition.to_lowercase();
                if !ap.is_empty() && ap != "default" {
                    path = format!("/ap/{ap}");
                }
                path.push_str(&format!("/ns/default/dc/{datacenter}/svc/{service}"));
            }
            SpiffeId::Agent {
                datacenter, agent, ..
            } => path = format!("/agent/client/dc/{datacenter}/id/{agent}"),
            SpiffeId::MeshGateway { datacenter, .. } => {
                path = format!("/gateway/mesh/dc/{datacenter}");
            }
            SpiffeId::Server { datacenter, .. } => path = format!("/agent/server/dc/{datacenter}"),
            SpiffeId::Signing { .. } => {}
        }
        write_escaped(f, &path, false)
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let long = "a".repeat(100_000);
        let cases = [
            String::new(),
            "%".into(),
            "spiffe://td/ns/%".into(),
            "spiffe://td/ns/a%2/dc/b/svc/c".into(),
            "spiffe://td/ns/a%zz/dc/b/svc/c".into(),
            "spiffe://td/ns/%é/dc/b/svc/c".into(),
            "spiffe://td/ns/%ff/dc/b/svc/c".into(),
            "spiffe://td/ns//dc/b/svc/c".into(),
            "spiffe://td/ap//ns/a/dc/b/svc/c".into(),
            "spiffe://td//".into(),
            "spiffe://td/".into(),
            "spiffe://.consul".into(),
            "spiffe://".into(),
            "spiffe:".into(),
            "spiffe:x".into(),
            "spiffe://a b/ns/a/dc/b/svc/c".into(),
            "spiffe://td:x/ns/a/dc/b/svc/c".into(),
            "spiffe://[::1/ns/a/dc/b/svc/c".into(),
            "spiffe://td/ns/a\n/dc/b/svc/c".into(),
            "spiffe://td/ns/a/dc/b/svc/c#%".into(),
            format!("spiffe://td/{}", "/".repeat(100_000)),
            format!("spiffe://{long}/ns/{long}/dc/b/svc/c/"),
            format!("{long}://td"),
        ];
        for c in &cases {
            let err = SpiffeId::parse(c).expect_err(c);
            assert!(err.to_string().len() < 400, "{err}");
        }
    }

    #[test]
    fn go_url_quirks_consul_inherits() {
        let td = "td.consul";
        let web = SpiffeId::service(td, "default", "default", "dc1", "web");
        for uri in [
            "SPIFFE://td.consul/ns/default/dc/dc1/svc/web",
            "spiffe://td.consul/ns/default/dc/dc1/svc/web?x=1#frag",
            "spiffe://user@td.consul/ns/default/dc/dc1/svc/web",
            "spiffe://td.consul/ns/default/dc/dc1/svc/w%65b",
        ] {
            assert_eq!(SpiffeId::parse(uri).as_ref(), Ok(&web), "{uri}");
        }
        let with_port = SpiffeId::parse("spiffe://td.consul:8443/agent/server/dc/dc1");
        assert!(
            matches!(with_port, Ok(SpiffeId::Server { trust_domain, .. }) if trust_domain == "td.consul:8443")
        );
        let no_host = SpiffeId::parse("spiffe:/ns/default/dc/dc1/svc/web");
        assert!(
            matches!(no_host, Ok(SpiffeId::Service { trust_domain, .. }) if trust_domain.is_empty())
        );
    }

    #[test]
    fn rendering_escapes_like_go() {
        let id = SpiffeId::service("td", "AP1", "x", "dc 1", "wéb?");
        assert_eq!(
            id.to_string(),
            "spiffe://td/ap/ap1/ns/default/dc/dc%201/svc/w%C3%A9b%3F"
        );
        let gw = SpiffeId::MeshGateway {
            trust_domain: "td".into(),
            partition: "ap1".into(),
            datacenter: "dc1".into(),
        };
        assert_eq!(gw.to_string(), "spiffe://td/gateway/mesh/dc/dc1");
        let signing = SpiffeId::Signing {
            cluster_id: "ABC".into(),
            domain: "Consul".into(),
        };
        assert_eq!(signing.to_string(), "spiffe://abc.consul");
    }

    #[test]
    fn can_sign_only_from_a_signing_id_and_never_a_client_agent() {
        let signer = SpiffeId::signing_for_cluster("ABC");
        let agent = SpiffeId::parse("spiffe://abc.consul/agent/client/dc/dc1/id/n1").unwrap();
        let web = SpiffeId::parse("spiffe://ABC.consul/ns/default/dc/dc1/svc/web").unwrap();
        assert!(!signer.can_sign(&agent));
        assert!(signer.can_sign(&web));
        assert!(!web.can_sign(&web));
        assert!(signer.can_sign(&SpiffeId::parse("spiffe://abc.CONSUL").unwrap()));
    }

    #[test]
    fn pseudo_random_input_never_panics() {
        // A tiny LCG over pieces that exercise every branch; no rand dependency needed.
        let pieces = [
            "spiffe:", "//", "/", "%", "%2F", "%f", "ap", "ns", "dc", "svc", "agent", "client",
            "server", "gateway", "mesh", "id", "@", ":", "?", "#", ".", "[", "]", "é", "x", "",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..(state % 16) {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let i = usize::try_from(state >> 33).unwrap_or(0) % pieces.len();
                s.push_str(pieces.get(i).copied().unwrap_or(""));
            }
            if let Ok(id) = SpiffeId::parse(&s) {
                let _ = id.to_string();
            }
            state = state.wrapping_add(1);
        }
    }
}
