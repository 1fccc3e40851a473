//! The agent's HTTP API as the tests use it: registrations, config entries, intentions,
//! authorization, leaves and roots (also as PEM files for the file source), CA rotation, and
//! what the catalog says across the WAN.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::http::{self, Response};
use super::{Agent, READY_WITHIN};
use crate::common::eventually_within;

impl Agent {
    pub fn call(&self, method: &str, path: &str, body: &str) -> Response {
        let token = self.options.token.as_deref();
        http::request(self.http, method, path, body, token)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.http))
    }

    pub fn get(&self, path: &str) -> Response {
        self.call("GET", path, "")
    }

    /// A call that must answer 200; returns the body.
    pub fn ok(&self, method: &str, path: &str, body: &Value) -> Response {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = self.call(method, path, &body);
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        r
    }

    /// Polls `probe` (bounded) until it answers.
    pub fn wait_until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let what = format!("{what} on {}", self.http);
        eventually_within(READY_WITHIN, &what, || probe().ok_or("no answer"))
    }

    /// `PUT /v1/agent/service/register`, then a TTL pass for the test's check of the
    /// service's sidecar or of a gateway (`passing_check`), as a healthy service's heartbeat:
    /// a status set by a TTL update is kept on disk and survives an agent restart, while the
    /// initial `Status` of a registration is not.
    pub fn register(&self, service: &Value) {
        self.register_without_heartbeat(service);
        let id = service["ID"].as_str().unwrap();
        let check = if service["Connect"]["SidecarService"].is_object() {
            Some(format!("service:{id}-sidecar-proxy"))
        } else {
            service["Checks"]
                .is_array()
                .then(|| format!("service:{id}"))
        };
        if let Some(check) = check {
            self.ok(
                "PUT",
                &format!("/v1/agent/check/pass/{check}"),
                &Value::Null,
            );
        }
    }

    /// `PUT /v1/agent/service/register` alone: the checks are passing from the registration
    /// but, with no heartbeat, critical once the agent restarts — as every check of a
    /// restarted agent is until it runs again.
    pub fn register_without_heartbeat(&self, service: &Value) {
        self.ok("PUT", "/v1/agent/service/register", service);
    }

    /// `PUT /v1/config`: a config entry (`Kind`, `Name`, fields).
    pub fn config_entry(&self, entry: &Value) {
        self.ok("PUT", "/v1/config", entry);
    }

    /// Creates or updates the intention `source → destination` (1.8: `/v1/connect/intentions`).
    pub fn set_intention(&self, source: &str, destination: &str, action: &str) {
        let all = self.get("/v1/connect/intentions").json();
        let existing = all
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["SourceName"] == source && i["DestinationName"] == destination);
        let body = json!({"SourceName": source, "DestinationName": destination, "Action": action});
        match existing.and_then(|i| i["ID"].as_str()) {
            Some(id) => self.ok("PUT", &format!("/v1/connect/intentions/{id}"), &body),
            None => self.ok("POST", "/v1/connect/intentions", &body),
        };
    }

    /// What the agent itself decides for a caller (`consul connect proxy` asks the same).
    pub fn authorized(&self, source: &str, target: &str) -> bool {
        let td = self.roots().trust_domain;
        let uri = format!(
            "spiffe://{td}/ns/default/dc/{}/svc/{source}",
            self.options.datacenter
        );
        let r = self.ok(
            "POST",
            "/v1/agent/connect/authorize",
            &json!({"Target": target, "ClientCertURI": uri, "ClientCertSerial": "01"}),
        );
        r.json()["Authorized"].as_bool().unwrap()
    }

    pub fn leaf(&self, service: &str) -> Leaf {
        let v = self
            .ok(
                "GET",
                &format!("/v1/agent/connect/ca/leaf/{service}"),
                &Value::Null,
            )
            .json();
        Leaf {
            cert_pem: v["CertPEM"].as_str().unwrap().to_owned(),
            key_pem: v["PrivateKeyPEM"].as_str().unwrap().to_owned(),
            uri: v["ServiceURI"].as_str().unwrap().to_owned(),
        }
    }

    pub fn roots(&self) -> Roots {
        let v = self
            .ok("GET", "/v1/agent/connect/ca/roots", &Value::Null)
            .json();
        let roots = v["Roots"].as_array().unwrap();
        let active = v["ActiveRootID"].as_str().unwrap().to_owned();
        Roots {
            trust_domain: v["TrustDomain"].as_str().unwrap().to_owned(),
            active_pem: roots
                .iter()
                .find(|r| r["ID"] == active.as_str())
                .and_then(|r| r["RootCert"].as_str())
                .unwrap()
                .to_owned(),
            pems: roots
                .iter()
                .map(|r| r["RootCert"].as_str().unwrap().to_owned())
                .collect(),
            active_id: active,
        }
    }

    /// Writes `service`'s leaf, key and every root as PEM files for sidegate's file source.
    pub fn identity_files(&self, service: &str, dir: &Path) -> TlsFiles {
        let leaf = self.leaf(service);
        let files = TlsFiles {
            service: service.to_owned(),
            cert: dir.join(format!("{service}.pem")),
            key: dir.join(format!("{service}-key.pem")),
            ca: dir.join(format!("{service}-roots.pem")),
            uri: leaf.uri.clone(),
        };
        std::fs::write(&files.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&files.key, &leaf.key_pem).unwrap();
        std::fs::write(&files.ca, self.roots().pems.concat()).unwrap();
        files
    }

    /// Rotates the built-in CA to a new root key (`PUT /v1/connect/ca/configuration`) and
    /// waits until the agent serves the new active root; the old root stays trusted.
    pub fn rotate_ca(&self) -> Roots {
        let before = self.roots();
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        self.ok(
            "PUT",
            "/v1/connect/ca/configuration",
            &json!({"Provider": "consul", "Config": {"PrivateKey": key, "LeafCertTTL": "72h"}}),
        );
        self.wait_until("the new CA root", || {
            let now = self.roots();
            (now.active_id != before.active_id).then_some(now)
        })
    }

    /// Registers a `mesh-gateway` service reached at `lan` from its own datacenter and at `wan`
    /// from others (its `lan` / `wan` tagged addresses), listening only on the tagged addresses
    /// named in `listen_on` (`envoy_gateway_no_default_bind` + `envoy_gateway_bind_addresses`,
    /// as `consul connect envoy -gateway=mesh -register -bind-address` writes them). A tagged
    /// address it does not listen on makes a test see which address a path took.
    pub fn register_mesh_gateway(
        &self,
        id: &str,
        lan: SocketAddr,
        wan: SocketAddr,
        listen_on: &[&str],
    ) {
        self.register_mesh_gateway_named("mesh-gateway", id, lan, wan, listen_on);
    }

    /// `register_mesh_gateway` under another service name (the kind is what makes it a
    /// gateway).
    pub fn register_mesh_gateway_named(
        &self,
        name: &str,
        id: &str,
        lan: SocketAddr,
        wan: SocketAddr,
        listen_on: &[&str],
    ) {
        let addr = |a: SocketAddr| json!({"Address": a.ip().to_string(), "Port": a.port()});
        let binds: serde_json::Map<String, Value> = listen_on
            .iter()
            .map(|&name| {
                let a = if name == "lan" { lan } else { wan };
                (
                    name.to_owned(),
                    json!({"address": a.ip().to_string(), "port": a.port()}),
                )
            })
            .collect();
        self.register(&json!({
            "Kind": "mesh-gateway",
            "ID": id,
            "Name": name,
            "Address": lan.ip().to_string(),
            "Port": lan.port(),
            "TaggedAddresses": {"lan": addr(lan), "wan": addr(wan)},
            "Proxy": {"Config": {
                "envoy_gateway_no_default_bind": true,
                "envoy_gateway_bind_addresses": binds,
            }},
            "Checks": [passing_check()],
        }));
    }
}

impl Agent {
    /// The `wan` tagged address of `datacenter`'s mesh gateways as this agent's catalog
    /// answers across the WAN federation (`/v1/catalog/service/mesh-gateway?dc=`).
    pub fn mesh_gateway_wan(&self, datacenter: &str) -> Vec<SocketAddr> {
        let v = self.ok(
            "GET",
            &format!("/v1/catalog/service/mesh-gateway?dc={datacenter}"),
            &Value::Null,
        );
        let v = v.json();
        v.as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                let wan = &n["ServiceTaggedAddresses"]["wan"];
                format!("{}:{}", wan["Address"].as_str().unwrap(), wan["Port"])
                    .parse()
                    .unwrap()
            })
            .collect()
    }
}

/// A check that is passing from the start, so that `?passing` health queries (what
/// `consul connect proxy` resolves upstreams with) see the instance at once, not after the
/// default TCP check's first interval.
pub fn passing_check() -> Value {
    json!({"Name": "registered by the test", "TTL": "1h", "Status": "passing"})
}

/// A service registration with a Connect sidecar (`connect.sidecar_service`): the app at
/// `app`, the sidecar's public listener at 127.0.0.1:`public_port`, its upstreams (Consul's
/// JSON, e.g. `[{"DestinationName": "db", "LocalBindPort": 9191}]`) and proxy-level
/// `mesh_gateway` mode (`""` for none set).
pub fn service_with_sidecar(
    service: &str,
    app: SocketAddr,
    public_port: u16,
    upstreams: Value,
    mesh_gateway_mode: &str,
) -> Value {
    let mut proxy = json!({
        "LocalServiceAddress": app.ip().to_string(),
        "LocalServicePort": app.port(),
        "Upstreams": upstreams,
    });
    if !mesh_gateway_mode.is_empty() {
        proxy["MeshGateway"] = json!({"Mode": mesh_gateway_mode});
    }
    json!({
        "Name": service,
        "ID": service,
        "Address": app.ip().to_string(),
        "Port": app.port(),
        "Connect": {"SidecarService": {
            "Address": "127.0.0.1",
            "Port": public_port,
            "Proxy": proxy,
            "Checks": [passing_check()],
        }},
    })
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// The SPIFFE ID Consul says the leaf carries.
    pub uri: String,
}

pub struct Roots {
    pub trust_domain: String,
    pub active_id: String,
    pub active_pem: String,
    /// Every root, active or not: what a proxy must trust during a rotation.
    pub pems: Vec<String>,
}

/// sidegate's `[tls]` files for one service.
pub struct TlsFiles {
    pub service: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub uri: String,
}

impl TlsFiles {
    pub fn toml(&self) -> String {
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
            self.cert.display(),
            self.key.display(),
            self.ca.display()
        )
    }
}
