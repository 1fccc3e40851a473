//! Errors from the agent an operator can act on: which endpoint, the HTTP status, Consul's own
//! message, and the likely cause with what to change.

use std::fmt;

/// One failed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// Method, path and query as sent (the token travels in a header, never here).
    pub endpoint: String,
    pub kind: ErrorKind,
    /// What probably went wrong and what to change, when it can be told.
    pub cause: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No HTTP answer: refused, reset, timed out, TLS failure.
    Unreachable { address: String, error: String },
    /// The agent answered with this status; `message` is its body, clipped.
    Status { status: u16, message: String },
    /// A 2xx answer whose body is not what the endpoint returns.
    Body(String),
}

impl ApiError {
    /// The agent did not answer: nothing it said can be trusted or distrusted, so the last
    /// known state stays in force.
    pub fn is_unreachable(&self) -> bool {
        matches!(self.kind, ErrorKind::Unreachable { .. })
    }

    /// The agent answered and refused (4xx): retrying the same request will not help until
    /// an operator changes something.
    pub fn is_refusal(&self) -> bool {
        matches!(self.kind, ErrorKind::Status { status, .. } if (400..500).contains(&status))
    }

    pub fn status(&self) -> Option<u16> {
        match self.kind {
            ErrorKind::Status { status, .. } => Some(status),
            _ => None,
        }
    }

    pub fn unreachable(endpoint: String, address: &str, error: String) -> ApiError {
        let cause = transport_cause(address, &error);
        ApiError {
            endpoint,
            kind: ErrorKind::Unreachable {
                address: address.to_owned(),
                error,
            },
            cause,
        }
    }

    pub fn status_error(endpoint: String, status: u16, body: &str) -> ApiError {
        let message = clip(body.trim(), 300);
        let cause = status_cause(&endpoint, status, &message);
        ApiError {
            endpoint,
            kind: ErrorKind::Status { status, message },
            cause,
        }
    }

    pub fn body(endpoint: String, error: impl fmt::Display) -> ApiError {
        ApiError {
            endpoint,
            kind: ErrorKind::Body(clip(&error.to_string(), 300)),
            cause: Some("the agent's answer has an unexpected shape; is this a Consul agent of version 1.8 or later?".to_owned()),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.endpoint)?;
        match &self.kind {
            ErrorKind::Unreachable { address, error } => {
                write!(f, "no answer from the agent at {address}: {error}")?;
            }
            ErrorKind::Status { status, message } => write!(f, "HTTP {status}: {message:?}")?,
            ErrorKind::Body(e) => write!(f, "unexpected answer: {e}")?,
        }
        if let Some(cause) = &self.cause {
            write!(f, " — {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn transport_cause(address: &str, error: &str) -> Option<String> {
    let e = error.to_ascii_lowercase();
    let cause = if e.contains("refused") {
        format!("is the Consul agent running at {address}? Set [consul] address or CONSUL_HTTP_ADDR to where it listens")
    } else if e.contains("certificate") || e.contains("unknownissuer") || e.contains("tls") {
        "the agent's HTTPS certificate was not accepted: set [consul] ca_file (or CONSUL_CACERT) to the CA that signed it, and use the host name or IP its certificate names".to_owned()
    } else if e.contains("timed out") || e.contains("timeout") {
        format!("the agent at {address} did not answer in time; is the host reachable and the agent healthy?")
    } else if e.contains("dns") || e.contains("resolve") || e.contains("lookup") {
        format!("the agent's host name in {address} does not resolve")
    } else {
        return None;
    };
    Some(cause)
}

/// The likely cause of a refusal, from the endpoint and Consul's message.
fn status_cause(endpoint: &str, status: u16, message: &str) -> Option<String> {
    let path = endpoint
        .split_once(' ')
        .map_or(endpoint, |(_, p)| p)
        .split('?')
        .next()
        .unwrap_or_default();
    let query = endpoint.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    };
    let last = path.rsplit('/').next().unwrap_or_default();
    let m = message.to_ascii_lowercase();
    let cause = match status {
        400 if param("ns").is_some() || param("partition").is_some() => {
            "namespaces and admin partitions need Consul Enterprise; this agent is Community Edition, so use only the default namespace and partition".to_owned()
        }
        400 if m.contains("http request to an https server") || m.contains("https") => {
            "the agent speaks HTTPS on this port: write the address as https://...".to_owned()
        }
        401 | 403 => acl_cause(path, last, param("dc"), param("partition"), &m),
        404 if path.starts_with("/v1/agent/service/") => format!(
            "no service with ID {last:?} is registered on this agent; register it (consul services register) or fix sidecar_service_id / gateway_service_id"
        ),
        500 if m.contains("no path to datacenter") => format!(
            "the agent knows no route to datacenter {}: are the servers joined over the WAN (consul join -wan) and is the name right?",
            param("dc").unwrap_or("?")
        ),
        500 | 502 | 503 if m.contains("no cluster leader") || m.contains("no known consul servers") => {
            "the Consul servers have no leader or the agent cannot reach them".to_owned()
        }
        _ => return None,
    };
    Some(cause)
}

fn acl_cause(
    path: &str,
    last: &str,
    dc: Option<&str>,
    partition: Option<&str>,
    message: &str,
) -> String {
    let not_found = message.contains("acl not found") || message.contains("token not found");
    if path.starts_with("/v1/agent/connect/ca/leaf/") {
        return format!("the token needs service:write on {last:?} to get its leaf certificate");
    }
    if path == "/v1/agent/connect/authorize" {
        return "the token needs service:write on this sidecar's service to ask the agent about intentions".to_owned();
    }
    if path.starts_with("/v1/health/") || path.starts_with("/v1/catalog/") {
        if let Some(p) = partition {
            return format!("services of partition {p} are not visible to this token: the exporting partition must export them (and the mesh-gateway service) to ours in its exported-services entry, or the token needs service:read and node:read there");
        }
        if let Some(dc) = dc {
            if not_found {
                return format!("the token is unknown in datacenter {dc}: it must be a global token (created in the primary datacenter and replicated), not a local one");
            }
            return format!("the token needs service:read on {last:?} and node:read in datacenter {dc}; for another datacenter it must also be a global (replicated) token");
        }
        return format!("the token needs service:read on {last:?} and node:read");
    }
    if path.starts_with("/v1/agent/service/") {
        return format!("the token needs service:read on the service registered as {last:?}");
    }
    if path.starts_with("/v1/config/") {
        return "the token needs service:read on that service to read its service-defaults (proxy-defaults needs none)".to_owned();
    }
    if not_found {
        return "the token is not known to Consul: check token_file / CONSUL_HTTP_TOKEN".to_owned();
    }
    "the token lacks a permission this endpoint needs (see README: ACL permissions)".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(endpoint: &str, status: u16, body: &str) -> String {
        ApiError::status_error(endpoint.to_owned(), status, body)
            .cause
            .unwrap_or_default()
    }

    #[test]
    fn refusals_name_the_likely_cause() {
        let cases = [
            (
                "GET /v1/health/connect/db?dc=dc2",
                403,
                "ACL not found",
                "global token",
            ),
            (
                "GET /v1/health/connect/db?dc=dc2",
                403,
                "Permission denied",
                "service:read on \"db\" and node:read in datacenter dc2",
            ),
            (
                "GET /v1/agent/connect/ca/leaf/web",
                403,
                "Permission denied",
                "service:write on \"web\"",
            ),
            (
                "GET /v1/health/service/mesh-gateway?dc=dc1&partition=finance",
                403,
                "Permission denied",
                "export them (and the mesh-gateway service)",
            ),
            (
                "GET /v1/health/connect/db?dc=dc1&ns=team",
                400,
                "Bad request: Invalid query parameter: \"ns\"",
                "Community Edition",
            ),
            (
                "GET /v1/agent/service/web-sidecar-proxy",
                404,
                "unknown service ID: web-sidecar-proxy",
                "register it",
            ),
            (
                "GET /v1/health/connect/db?dc=dc9",
                500,
                "No path to datacenter",
                "datacenter dc9",
            ),
            (
                "POST /v1/agent/connect/authorize",
                403,
                "Permission denied",
                "service:write",
            ),
        ];
        for (endpoint, status, body, want) in cases {
            let got = cause(endpoint, status, body);
            assert!(got.contains(want), "{endpoint} {status}: {got}");
        }
        assert!(ApiError::status_error("GET /v1/x".into(), 418, "teapot")
            .cause
            .is_none());
    }

    #[test]
    fn transport_errors_name_the_address() {
        let e = ApiError::unreachable(
            "GET /v1/agent/connect/ca/roots".into(),
            "http://127.0.0.1:8500",
            "io: Connection refused (os error 111)".into(),
        );
        let shown = e.to_string();
        assert!(shown.contains("/v1/agent/connect/ca/roots"), "{shown}");
        assert!(
            shown.contains("agent running at http://127.0.0.1:8500"),
            "{shown}"
        );
        assert!(e.is_unreachable() && !e.is_refusal());
        let tls = ApiError::unreachable(
            "GET /v1/x".into(),
            "https://h:8501",
            "rustls: invalid peer certificate: UnknownIssuer".into(),
        );
        assert!(tls.cause.unwrap_or_default().contains("ca_file"));
    }

    #[test]
    fn shows_status_and_message_clipped() {
        let long = "x".repeat(1000);
        let e = ApiError::status_error("GET /v1/x".into(), 500, &long);
        let shown = e.to_string();
        assert!(shown.contains("HTTP 500"));
        assert!(shown.len() < 400, "{}", shown.len());
        assert_eq!(e.status(), Some(500));
    }
}
