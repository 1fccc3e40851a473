//! The agent's HTTP API over ureq: one blocking request at a time per caller thread, the token
//! in `X-Consul-Token`, HTTPS verified against the configured CA only (no bundled web roots:
//! an agent's certificate comes from the cluster's own CA).

use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::Agent;

use super::blocking::{request_timeout, wait_param};
use super::errors::ApiError;
use crate::config::consul::settings::{Scheme, Settings, Token};

/// The largest body accepted: a gateway's catalog of a few thousand services fits; a runaway
/// or hostile answer does not take the host's memory.
pub const MAX_BODY: u64 = 16 << 20;
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
    base: String,
    token: Option<Token>,
}

impl Client {
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place that builds the Consul agent's HTTP client"
    )]
    pub fn new(settings: &Settings) -> Arc<Client> {
        let mut tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()));
        if settings.address.scheme == Scheme::Https {
            let roots: Vec<Certificate<'static>> = settings
                .ca
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect();
            // No CA given: an empty root set refuses every certificate, and the error says to
            // set ca_file, rather than trusting a bundle nobody chose.
            tls = tls.root_certs(RootCerts::new_with_certs(&roots));
        }
        let config = Agent::config_builder()
            .http_status_as_error(false)
            // A redirect could carry the token to another host; the agent never redirects.
            .max_redirects(0)
            // The agent is local; a proxy from the environment has no business in between.
            .proxy(None)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            // Connections kept open between requests count against the agent's limit per
            // client address (`http_max_conns_per_client`) like busy ones: keep as many as
            // a gateway's fetch workers use at once.
            .max_idle_connections(IDLE_CONNECTIONS)
            .max_idle_connections_per_host(IDLE_CONNECTIONS)
            .timeout_global(Some(SHORT_TIMEOUT))
            .user_agent(concat!("sidegate/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build();
        Arc::new(Client {
            agent: Agent::new_with_config(config),
            base: settings.address.base(),
            token: settings.token.clone(),
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
        &self.base
    }

    pub fn get(&self, req: &Request, blocking: &Blocking) -> Result<Reply, ApiError> {
        let shown = req.shown("GET", blocking);
        let mut call = self.agent.get(format!("{}{}", self.base, req.path));
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
        let answer = call.config().timeout_global(Some(timeout)).build().call();
        self.reply(shown, answer)
    }

    pub fn post(&self, req: &Request, body: &str) -> Result<Reply, ApiError> {
        let shown = req.shown("POST", &Blocking::No);
        let mut call = self
            .agent
            .post(format!("{}{}", self.base, req.path))
            .content_type("application/json");
        for (k, v) in &req.query {
            call = call.query(*k, v);
        }
        if let Some(t) = &self.token {
            call = call.header("X-Consul-Token", t.expose());
        }
        self.reply(shown, call.send(body))
    }

    fn reply(
        &self,
        shown: String,
        answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, ApiError> {
        let mut resp =
            answer.map_err(|e| ApiError::unreachable(shown.clone(), &self.base, e.to_string()))?;
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
            .map_err(|e| ApiError::unreachable(shown.clone(), &self.base, e.to_string()))?;
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
            .field("address", &self.base)
            .field("token", &self.token)
            .finish()
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
    fn escapes_segments() {
        assert_eq!(segment("web-sidecar-proxy"), "web-sidecar-proxy");
        assert_eq!(segment("a b/c?"), "a%20b%2Fc%3F");
    }
}
