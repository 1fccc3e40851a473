//! The agent's HTTP API over ureq: one blocking request at a time per caller thread, the token
//! in `X-Consul-Token`, HTTPS verified against the configured CA only (no bundled web roots:
//! an agent's certificate comes from the cluster's own CA).

use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::Agent;

use super::blocking::{request_timeout, wait_param};
use super::errors::ApiError;
use crate::config::consul::settings::{Scheme, Settings, Token};

/// The largest body accepted: a gateway's catalog of a few thousand services fits; a runaway
/// or hostile answer does not take the host's memory.
pub const MAX_BODY: u64 = 16 << 20;
/// Each of a connection's two buffers (in and out), in bytes.
const IO_BUFFER: usize = 16 << 10;
/// Non-blocking requests and the connection attempt of any request.
const SHORT_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept for reuse (the fleet's fetch workers').
const IDLE_CONNECTIONS: usize = super::fleet::WORKERS;

/// How a GET waits for change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocking {
    /// Answer at once.
    No,
    /// `?index=` (0 answers at once).
    Index(u64, Duration),
    /// `?hash=` (agent-local endpoints; empty answers at once).
    Hash(String, Duration),
}

/// One request: path (segments already escaped) and query parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub query: Vec<(&'static str, String)>,
}

impl Request {
    pub fn new(path: String) -> Request {
        Request {
            path,
            query: Vec::new(),
        }
    }

    pub fn param(mut self, key: &'static str, value: impl Into<String>) -> Request {
        self.query.push((key, value.into()));
        self
    }

    /// Method, path and query as shown in errors and logs.
    pub fn shown(&self, method: &str, blocking: &Blocking) -> String {
        let mut s = format!("{method} {}", self.path);
        let extra = match blocking {
            Blocking::Index(i, _) if *i > 0 => Some(("index", i.to_string())),
            _ => None,
        };
        for (i, (k, v)) in self
            .query
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .chain(extra)
            .enumerate()
        {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(k);
            if !v.is_empty() {
                s.push('=');
                s.push_str(&v);
            }
        }
        s
    }
}

/// A 2xx or 404 answer; other statuses are errors.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// `X-Consul-Index`.
    pub index: Option<u64>,
    /// `X-Consul-ContentHash`.
    pub hash: Option<String>,
}

pub struct Client {
    agent: Agent,
    /// How this client's agent was made, to make another like it (`own`).
    maker: Arc<Maker>,
    /// The prefix of request URLs: the agent's address, or with `CONSUL_TLS_SERVER_NAME`
    /// that name (which `AgentAt` resolves to the address).
    base: String,
    /// The agent's address as configured, for logs and errors.
    shown: String,
    token: Option<Token>,
}

/// What a ureq agent for the Consul agent is made of, kept so that each watch can have one
/// of its own (`Client::own`). The TLS settings are made (and their warnings logged) once.
struct Maker {
    tls: TlsConfig,
    route: Route,
}

/// How a connection reaches the agent.
enum Route {
    /// The agent's Unix socket; the URL's host only fills the Host header.
    Unix(String),
    /// The configured address, whatever host the URL names (`CONSUL_TLS_SERVER_NAME`).
    At(String),
    /// The URL's host and port.
    Direct,
}

impl Maker {
    /// A ureq agent keeping up to `idle` connections open between requests.
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place that builds the Consul agent's HTTP client"
    )]
    fn agent(&self, idle: usize) -> Agent {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            // A redirect could carry the token to another host; the agent never redirects.
            .max_redirects(0)
            // The agent is local; a proxy from the environment has no business in between.
            .proxy(None)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            // Connections kept open between requests count against the agent's limit per
            // client address (`http_max_conns_per_client`) like busy ones.
            .max_idle_connections(idle)
            .max_idle_connections_per_host(idle)
            .timeout_global(Some(SHORT_TIMEOUT))
            .user_agent(concat!("sidegate/", env!("CARGO_PKG_VERSION")))
            .tls_config(self.tls.clone())
            // ureq fills both buffers of every connection with zeros up front (128 KiB each
            // by default): 256 KiB of memory per connection to the agent, more than all the
            // state of 100 followed services. A request (path, query, token) and an answer's
            // headers are a few hundred bytes; bodies stream through in pieces.
            .input_buffer_size(IO_BUFFER)
            .output_buffer_size(IO_BUFFER)
            // An answer whose headers do not fit is refused as such, not read in pieces.
            .max_response_header_size(IO_BUFFER)
            .build();
        match &self.route {
            Route::Unix(path) => Agent::with_parts(
                config,
                super::unix::UnixConnector(path.into()),
                super::unix::NoResolve,
            ),
            // The URL names the server name, so that ureq sends it as SNI and verifies the
            // certificate for it; the connection still goes to the configured address.
            Route::At(authority) => {
                Agent::with_parts(config, DefaultConnector::new(), AgentAt(authority.clone()))
            }
            Route::Direct => Agent::new_with_config(config),
        }
    }
}

impl Client {
    pub fn new(settings: &Settings) -> Arc<Client> {
        let shown = settings.address.base();
        let authority = settings.address.authority.clone();
        let (route, base) = match &settings.tls_server_name {
            _ if settings.address.scheme == Scheme::Unix => {
                (Route::Unix(authority), "http://localhost".to_owned())
            }
            Some(name) => {
                let base = with_host(&authority, name);
                (Route::At(authority), base)
            }
            None => (Route::Direct, shown.clone()),
        };
        let maker = Arc::new(Maker {
            tls: tls_config(settings),
            route,
        });
        Arc::new(Client {
            agent: maker.agent(IDLE_CONNECTIONS),
            maker,
            base,
            shown,
            token: settings.token.clone(),
        })
    }

    /// A client for the same agent, with the same settings and token, but connections of its
    /// own (up to `idle` kept between requests): its `shutdown` ends its own requests only.
    /// Each watch has one, so that a watch no longer needed closes its connection at once
    /// rather than when its blocking query's wait ends (up to 5 minutes), which a shared
    /// pool of connections cannot do for one request.
    pub fn own(&self, idle: usize) -> Arc<Client> {
        Arc::new(Client {
            agent: self.maker.agent(idle),
            maker: self.maker.clone(),
            base: self.base.clone(),
            shown: self.shown.clone(),
            token: self.token.clone(),
        })
    }

    /// Ends every request of this client now, in whatever thread it blocks (a blocking
    /// query waits up to 5 minutes), and refuses new ones: a replaced follower's watches end
    /// at once instead of holding their threads and agent connections until their wait
    /// ends. Connections are shut down, so the agent sees them close.
    pub fn shutdown(&self) {
        self.agent.clone().shutdown();
    }

    pub fn address(&self) -> &str {
        &self.shown
    }

    pub fn get(&self, req: &Request, blocking: &Blocking) -> Result<Reply, ApiError> {
        let shown = req.shown("GET", blocking);
        let call = self.agent.get(format!("{}{}", self.base, req.path));
        let (call, timeout) = self.prepare(call, req, blocking);
        let answer = call.config().timeout_global(Some(timeout)).build().call();
        self.reply(shown, answer)
    }

    pub fn post(&self, req: &Request, body: &str) -> Result<Reply, ApiError> {
        self.post_blocking(req, body, &Blocking::No)
    }

    /// A POST that blocks like a GET: the endpoints that compile something from the
    /// request's body (`/v1/discovery-chain/:service` with overrides) wait for change too.
    pub fn post_blocking(
        &self,
        req: &Request,
        body: &str,
        blocking: &Blocking,
    ) -> Result<Reply, ApiError> {
        let shown = req.shown("POST", blocking);
        let call = self
            .agent
            .post(format!("{}{}", self.base, req.path))
            .content_type("application/json");
        let (call, timeout) = self.prepare(call, req, blocking);
        let answer = call
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send(body);
        self.reply(shown, answer)
    }

    /// The query, the blocking parameters, the token, and how long the request may take.
    fn prepare<B>(
        &self,
        mut call: ureq::RequestBuilder<B>,
        req: &Request,
        blocking: &Blocking,
    ) -> (ureq::RequestBuilder<B>, Duration) {
        for (k, v) in &req.query {
            call = call.query(*k, v);
        }
        let timeout = match blocking {
            Blocking::No => SHORT_TIMEOUT,
            Blocking::Index(index, wait) => {
                if *index > 0 {
                    call = call.query("index", index.to_string());
                    call = call.query("wait", wait_param(*wait));
                }
                request_timeout(*wait)
            }
            Blocking::Hash(hash, wait) => {
                if !hash.is_empty() {
                    call = call.query("hash", hash);
                    call = call.query("wait", wait_param(*wait));
                }
                request_timeout(*wait)
            }
        };
        if let Some(t) = &self.token {
            call = call.header("X-Consul-Token", t.expose());
        }
        (call, timeout)
    }

    fn reply(
        &self,
        shown: String,
        answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, ApiError> {
        let mut resp =
            answer.map_err(|e| ApiError::unreachable(shown.clone(), &self.shown, e.to_string()))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let index = header("X-Consul-Index").and_then(|v| v.trim().parse::<u64>().ok());
        let hash = header("X-Consul-ContentHash");
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|e| ApiError::unreachable(shown.clone(), &self.shown, e.to_string()))?;
        match status {
            200..=299 | 404 => Ok(Reply {
                status,
                body,
                index,
                hash,
            }),
            _ => Err(ApiError::status_error(shown, status, &body)),
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.shown)
            .field("token", &self.token)
            .finish()
    }
}

fn tls_config(settings: &Settings) -> TlsConfig {
    let mut tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()));
    if settings.address.scheme != Scheme::Https {
        return tls.build();
    }
    let roots: Vec<Certificate<'static>> = settings
        .ca
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    // No CA given: an empty root set refuses every certificate, and the error says to
    // set ca_file, rather than trusting a bundle nobody chose.
    tls = tls.root_certs(RootCerts::new_with_certs(&roots));
    if !settings.verify {
        crate::warn!(
            "consul: CONSUL_HTTP_SSL_VERIFY=false: the certificate of the agent at {} is NOT verified; whoever is on the path can read the ACL token",
            settings.address
        );
        tls = tls.disable_verification(true);
    }
    if let Some(c) = &settings.client_cert {
        let chain: Vec<Certificate<'static>> = c
            .chain
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        // Checked when the settings were read; should it fail here, the agent refuses the
        // handshake and says so.
        match PrivateKey::from_pem(c.key_pem()) {
            Ok(key) => tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key))),
            Err(e) => crate::error!("consul: the client key (CONSUL_CLIENT_KEY) is unusable: {e}"),
        }
    }
    tls.build()
}

/// `scheme://name[:port]` with the port of `authority` (`host:port` or `[v6]:port`).
fn with_host(authority: &str, name: &str) -> String {
    let port = authority
        .rsplit_once(':')
        .filter(|(host, port)| !host.ends_with(':') && port.parse::<u16>().is_ok())
        .map(|(_, port)| format!(":{port}"))
        .unwrap_or_default();
    let host = if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_owned()
    };
    format!("https://{host}{port}")
}

/// Resolves every request's host to the agent's configured address: with
/// `CONSUL_TLS_SERVER_NAME`, the URL carries the name the certificate is verified for, which
/// need not resolve at all (Consul's own default is `server.<dc>.consul`).
#[derive(Debug)]
struct AgentAt(String);

impl Resolver for AgentAt {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let uri: ureq::http::Uri = format!("https://{}", self.0)
            .parse()
            .map_err(|_| ureq::Error::HostNotFound)?;
        DefaultResolver::default().resolve(&uri, config, timeout)
    }
}

/// One path segment, percent-escaped: service IDs are free text in Consul.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_requests_without_secrets() {
        let r = Request::new("/v1/health/connect/db".into())
            .param("dc", "dc2")
            .param("passing", "");
        assert_eq!(
            r.shown("GET", &Blocking::Index(42, Duration::from_secs(1))),
            "GET /v1/health/connect/db?dc=dc2&passing&index=42"
        );
        assert_eq!(
            Request::new("/v1/agent/connect/ca/roots".into()).shown("GET", &Blocking::No),
            "GET /v1/agent/connect/ca/roots"
        );
    }

    #[test]
    fn server_name_keeps_the_port() {
        assert_eq!(
            with_host("127.0.0.1:8501", "consul.local"),
            "https://consul.local:8501"
        );
        assert_eq!(with_host("[::1]:8501", "::1"), "https://[::1]:8501");
        assert_eq!(
            with_host("agent", "server.dc1.consul"),
            "https://server.dc1.consul"
        );
    }

    #[test]
    fn escapes_segments() {
        assert_eq!(segment("web-sidecar-proxy"), "web-sidecar-proxy");
        assert_eq!(segment("a b/c?"), "a%20b%2Fc%3F");
    }
}
