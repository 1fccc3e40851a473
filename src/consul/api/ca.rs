//! `GET /v1/agent/connect/ca/roots` (trust domain and every root to trust) and
//! `GET /v1/agent/connect/ca/leaf/:service` (this sidecar's certificate and key), and the
//! identity they make together.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::nullable;
use crate::names::SpiffeId;
use crate::tls::identity::Part;
use crate::tls::Identity;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CaRoots {
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
    pub trust_domain: String,
    #[serde(deserialize_with = "nullable")]
    pub roots: Vec<CaRoot>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CaRoot {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub root_cert: String,
    #[serde(deserialize_with = "nullable")]
    pub intermediate_certs: Vec<String>,
    pub active: bool,
    pub not_after: String,
}

impl CaRoots {
    /// Every root's PEM: peers' chains are checked against all of them, as Envoy is
    /// configured by Consul, so leaves of the old root stay valid during a rotation.
    pub fn pem(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.root_cert.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The trust domain, lower-cased as Consul compares it; an answer without one is not a
    /// Connect CA (Connect disabled on the servers).
    pub fn trust_domain(&self) -> Result<String, CaError> {
        let td = self.trust_domain.trim().to_ascii_lowercase();
        if td.is_empty() || self.roots.is_empty() {
            return Err(CaError::NoRoots);
        }
        Ok(td)
    }
}

/// The leaf. Its key never appears in `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct LeafCert {
    pub serial_number: String,
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    #[serde(rename = "PrivateKeyPEM")]
    pub private_key_pem: String,
    pub service: String,
    #[serde(rename = "ServiceURI")]
    pub service_uri: String,
    pub valid_after: String,
    pub valid_before: String,
    pub namespace: String,
    pub partition: String,
    pub modify_index: u64,
}

impl fmt::Debug for LeafCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafCert")
            .field("serial_number", &self.serial_number)
            .field("service_uri", &self.service_uri)
            .field("valid_before", &self.valid_before)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

impl LeafCert {
    /// The leaf's own SPIFFE ID as the agent reports it; it names the local datacenter,
    /// which older agents' service registrations do not carry.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        SpiffeId::parse(&self.service_uri).ok()
    }
}

/// Why the agent's CA answers give no identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaError {
    /// Connect is off on the servers: no roots, no trust domain.
    NoRoots,
    /// The leaf, its key or the roots did not load.
    Identity {
        what: &'static str,
        service: String,
        error: String,
    },
}

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaError::NoRoots => f.write_str("the agent reports no Connect CA roots: is connect enabled on the Consul servers (connect { enabled = true })?"),
            CaError::Identity { what, service, error } => {
                write!(f, "the agent's {what} for {service:?}: {error}")
            }
        }
    }
}

impl std::error::Error for CaError {}

/// Leaf, key and roots checked together, exactly as a file identity is.
pub fn identity(leaf: &LeafCert, roots: &CaRoots) -> Result<Arc<Identity>, CaError> {
    Identity::from_pem(
        leaf.cert_pem.as_bytes(),
        leaf.private_key_pem.as_bytes(),
        roots.pem().as_bytes(),
    )
    .map(Arc::new)
    .map_err(|(part, e)| {
        let what = match part {
            Part::Chain => "leaf certificate",
            Part::Key => "leaf private key",
            Part::Roots => "CA roots",
        };
        CaError::Identity {
            what,
            service: leaf.service.clone(),
            error: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::example;
    use super::*;

    #[test]
    fn roots_example_field_by_field() {
        let r: CaRoots = serde_json::from_str(&example("agent-connect-ca-roots.json")).unwrap();
        assert_eq!(
            r.trust_domain().unwrap(),
            "a1499528-fbf6-df7b-05e5-ae81e1873fc4.consul"
        );
        assert_eq!(r.active_root_id, r.roots[0].id);
        assert_eq!(r.roots.len(), 1);
        assert!(r.roots[0].active);
        assert!(r.roots[0].intermediate_certs.is_empty(), "null is empty");
        assert!(r.roots[0]
            .root_cert
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(r.roots[0].not_after, "2035-05-19T16:33:28Z");
        assert!(r.pem().contains("BEGIN CERTIFICATE"));

        let none = CaRoots::default();
        assert!(none
            .trust_domain()
            .unwrap_err()
            .to_string()
            .contains("connect"));
    }

    #[test]
    fn leaf_example_field_by_field() {
        let l: LeafCert = serde_json::from_str(&example("agent-connect-ca-leaf.json")).unwrap();
        assert_eq!(l.serial_number, "2b:4e:01");
        assert_eq!(l.service, "web");
        assert_eq!(
            (l.namespace.as_str(), l.partition.as_str()),
            ("default", "default")
        );
        assert_eq!(l.modify_index, 5231);
        assert_eq!(l.valid_before, "2025-11-21T09:59:00Z");
        assert!(l.private_key_pem.contains("EC PRIVATE KEY"));
        let Some(SpiffeId::Service {
            datacenter,
            service,
            ..
        }) = l.spiffe_id()
        else {
            panic!("{:?}", l.spiffe_id());
        };
        assert_eq!((datacenter.as_str(), service.as_str()), ("dc1", "web"));
        let shown = format!("{l:?}");
        assert!(
            !shown.contains("MHcC") && shown.contains("<redacted>"),
            "{shown}"
        );
        // The example's PEM bodies are elided: refused with the part named, not a panic.
        let roots: CaRoots = serde_json::from_str(&example("agent-connect-ca-roots.json")).unwrap();
        let err = identity(&l, &roots).unwrap_err().to_string();
        assert!(
            err.contains("leaf certificate") || err.contains("CA roots"),
            "{err}"
        );
    }

    #[test]
    fn identity_from_real_pems() {
        let read = |n: &str| {
            std::fs::read_to_string(format!(
                "{}/tests/fixtures/tls/{n}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let leaf = LeafCert {
            cert_pem: read("web.pem"),
            private_key_pem: read("web-key-sec1.pem"),
            service: "web".into(),
            ..LeafCert::default()
        };
        let roots = CaRoots {
            trust_domain: "11111111-2222-3333-4444-555555555555.consul".into(),
            roots: vec![
                CaRoot {
                    root_cert: read("ca.pem"),
                    ..CaRoot::default()
                },
                CaRoot {
                    root_cert: read("db.pem"),
                    ..CaRoot::default()
                },
            ],
            ..CaRoots::default()
        };
        let id = identity(&leaf, &roots).unwrap();
        assert_eq!(id.roots.len(), 2, "every root is trusted");
        assert!(id.spiffe_id.to_string().ends_with("/svc/web"));
    }
}
