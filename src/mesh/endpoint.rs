//! A dialable mesh address: `ip:port`, `[ipv6]:port`, or `hostname:port`.
//!
//! Hostnames are allowed because operators register gateways' WAN addresses as load-balancer
//! names (hashicorp/consul#17557); they are resolved when dialled, not when configured.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Addr(SocketAddr),
    Host { host: Box<str>, port: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointError {
    Empty,
    NoPort,
    BadPort,
    BadHost,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointError::Empty => "is empty",
            EndpointError::NoPort => "has no port (write host:port, e.g. 10.0.0.5:21000)",
            EndpointError::BadPort => "has a port that is not a number from 1 to 65535",
            EndpointError::BadHost => "has a host that is neither an IP address nor a DNS name",
        })
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(EndpointError::Empty);
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return if addr.port() == 0 {
                Err(EndpointError::BadPort)
            } else {
                Ok(Endpoint::Addr(addr))
            };
        }
        // A bare IPv6 address has colons but no port; say "no port", not "bad host".
        if s.parse::<std::net::IpAddr>().is_ok() {
            return Err(EndpointError::NoPort);
        }
        let (host, port) = s.rsplit_once(':').ok_or(EndpointError::NoPort)?;
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(EndpointError::BadPort),
            Ok(p) => p,
        };
        if !is_dns_name(host) {
            return Err(EndpointError::BadHost);
        }
        Ok(Endpoint::Host {
            host: host.to_ascii_lowercase().into_boxed_str(),
            port,
        })
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read back from the text `Serialize` writes (the Consul source's last-known-good state).
impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("{s:?} {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let ok = [
            ("10.0.0.5:21000", "10.0.0.5:21000"),
            ("[::1]:8443", "[::1]:8443"),
            ("GW.Example.com:443", "gw.example.com:443"),
        ];
        for (input, shown) in ok {
            let e: Endpoint = input.parse().unwrap_or_else(|err| panic!("{input}: {err}"));
            assert_eq!(e.to_string(), shown);
        }
        let bad = [
            ("", EndpointError::Empty),
            ("10.0.0.5", EndpointError::NoPort),
            ("::1", EndpointError::NoPort),
            ("10.0.0.5:0", EndpointError::BadPort),
            ("10.0.0.5:70000", EndpointError::BadPort),
            ("host:http", EndpointError::BadPort),
            ("bad_host:80", EndpointError::BadHost),
            ("-x.example:80", EndpointError::BadHost),
        ];
        for (input, err) in bad {
            assert_eq!(input.parse::<Endpoint>(), Err(err), "{input}");
        }
    }
}
