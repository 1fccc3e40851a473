//! `GET /v1/agent/service/:id`: the sidecar's or the gateway's own registration, as the agent
//! holds it (with central config merged in when the agent does that).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{nullable, MeshGatewayConfig};
use crate::mesh::intentions::{Action, Intentions};
use crate::mesh::mode::UnknownMode;
use crate::mesh::sidecar::{Bind, SidecarSpec, UpstreamSpec};
use crate::mesh::snapshot::Here;
use crate::mesh::{Endpoint, Place};
use crate::names::is_label;

/// Why a registration gives no sidecar or gateway at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationError {
    /// Registered, but as another kind of service.
    Kind {
        id: String,
        kind: String,
        want: &'static str,
    },
    /// The sidecar's destination is not a service name.
    Destination { id: String, service: String },
    /// The proxy's own `MeshGateway` mode does not parse.
    Mode { id: String, error: UnknownMode },
    /// A mesh gateway with nothing it can listen on.
    NoListenAddress { id: String },
}

impl fmt::Display for RegistrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistrationError::Kind { id, kind, want } => {
                write!(f, "service {id:?} is of kind {kind:?}, not a {want} registration")
            }
            RegistrationError::Destination { id, service } => write!(
                f,
                "sidecar {id:?} names destination service {service:?}, which is not a valid service name"
            ),
            RegistrationError::Mode { id, error } => {
                write!(f, "sidecar {id:?}: proxy mesh gateway mode {error}")
            }
            RegistrationError::NoListenAddress { id } => write!(
                f,
                "mesh gateway {id:?} has no address to listen on (register it with a port, or set [gateway] listen)"
            ),
        }
    }
}

impl std::error::Error for RegistrationError {}

/// Why one upstream of a registration is left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    DestinationType(String),
    Peering,
    Name { key: &'static str, value: String },
    NoBind,
    BindAddress(String),
    SocketMode(String),
    Mode(UnknownMode),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::DestinationType(t) => {
                write!(f, "destination_type {t:?} is not supported (only services)")
            }
            UpstreamError::Peering => {
                f.write_str("cluster-peering upstreams (destination_peer) are not supported")
            }
            UpstreamError::Name { key, value } => write!(f, "{key} {value:?} is not a valid name"),
            UpstreamError::NoBind => {
                f.write_str("has neither local_bind_port nor local_bind_socket_path")
            }
            UpstreamError::BindAddress(a) => {
                write!(f, "local_bind_address {a:?} is not an IP address")
            }
            UpstreamError::SocketMode(m) => {
                write!(f, "local_bind_socket_mode {m:?} is not an octal mode")
            }
            UpstreamError::Mode(e) => write!(f, "mesh gateway mode {e}"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(deserialize_with = "nullable")]
    pub kind: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub address: String,
    pub port: u16,
    #[serde(deserialize_with = "nullable")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(deserialize_with = "nullable")]
    pub meta: BTreeMap<String, String>,
    /// What a resolver's subset filter sees as `Service.Tags`.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub proxy: ProxyConfig,
    /// Enterprise only; absent means `default`.
    pub namespace: String,
    pub partition: String,
    /// Consul 1.9+; older agents leave it out.
    pub datacenter: String,
}

/// A tagged address. Consul emits `Address`/`Port`; some documentation samples show lower
/// case, which Go's decoder also accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ServiceAddress {
    #[serde(alias = "address")]
    pub address: String,
    #[serde(alias = "port")]
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ProxyConfig {
    pub destination_service_name: String,
    #[serde(rename = "DestinationServiceID")]
    pub destination_service_id: String,
    pub local_service_address: String,
    pub local_service_port: u16,
    pub local_service_socket_path: String,
    pub mode: String,
    #[serde(deserialize_with = "nullable")]
    pub config: Map<String, Value>,
    #[serde(deserialize_with = "nullable")]
    pub upstreams: Vec<Upstream>,
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Upstream {
    pub destination_type: String,
    pub destination_namespace: String,
    pub destination_partition: String,
    pub destination_peer: String,
    pub destination_name: String,
    pub datacenter: String,
    pub local_bind_address: String,
    pub local_bind_port: u16,
    pub local_bind_socket_path: String,
    pub local_bind_socket_mode: String,
    #[serde(deserialize_with = "nullable")]
    pub config: Map<String, Value>,
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
}

pub const KIND_SIDECAR: &str = "connect-proxy";
pub const KIND_MESH_GATEWAY: &str = "mesh-gateway";

/// Consul's default when `local_connect_timeout_ms` is not in the proxy's config.
const LOCAL_CONNECT_TIMEOUT_MS: u64 = SidecarSpec::DEFAULT_LOCAL_CONNECT_TIMEOUT_MS;

impl AgentService {
    /// Where the registration says it sits; the datacenter only when the agent says it.
    pub fn namespace(&self) -> &str {
        non_empty(&self.namespace, crate::mesh::place::DEFAULT_NAMESPACE)
    }

    pub fn partition(&self) -> &str {
        non_empty(&self.partition, crate::mesh::place::DEFAULT_PARTITION)
    }
}

fn non_empty<'a>(v: &'a str, default: &'a str) -> &'a str {
    if v.is_empty() {
        default
    } else {
        v
    }
}

/// The sidecar role from a `connect-proxy` registration. Upstreams sidegate cannot serve are
/// left out with a warning each; a registration that is not a sidecar at all is an error.
pub fn sidecar(
    svc: &AgentService,
    here: &Here,
) -> Result<(SidecarSpec, Vec<String>), RegistrationError> {
    if svc.kind != KIND_SIDECAR {
        return Err(RegistrationError::Kind {
            id: svc.id.clone(),
            kind: svc.kind.clone(),
            want: "sidecar (connect-proxy)",
        });
    }
    let proxy = &svc.proxy;
    let service = proxy.destination_service_name.as_str();
    if !is_label(service) {
        return Err(RegistrationError::Destination {
            id: svc.id.clone(),
            service: service.to_owned(),
        });
    }
    let mut warnings = Vec::new();
    let mesh_gateway = proxy
        .mesh_gateway
        .parsed()
        .map_err(|error| RegistrationError::Mode {
            id: svc.id.clone(),
            error,
        })?;
    let local_service_address = local_service(proxy);
    let public_listener = public_listener(svc, &mut warnings).filter(|_| {
        let ok = local_service_address.is_some();
        if !ok {
            warnings.push(format!("sidecar {:?} has no local_service_port (or only a socket path, which sidegate does not deliver to): its public listener stays closed", svc.id));
        }
        ok
    });
    let local_connect_timeout = millis(&proxy.config, "local_connect_timeout_ms")
        .unwrap_or(Duration::from_millis(LOCAL_CONNECT_TIMEOUT_MS));
    let mut upstreams: Vec<UpstreamSpec> = Vec::with_capacity(proxy.upstreams.len());
    for u in &proxy.upstreams {
        match upstream(u, here) {
            Ok(spec) if upstreams.iter().any(|e| e.bind == spec.bind) => warnings.push(format!(
                "upstream {} binds {} like an earlier upstream; left out",
                u.destination_name, spec.bind
            )),
            Ok(spec) => upstreams.push(spec),
            Err(e) => warnings.push(format!("upstream {:?}: {e}; left out", u.destination_name)),
        }
    }
    let spec = SidecarSpec {
        service: service.to_owned(),
        public_listener,
        local_service_address: local_service_address
            .unwrap_or(Endpoint::Addr(SocketAddr::from(([127, 0, 0, 1], 1)))),
        local_connect_timeout,
        mesh_gateway,
        // With the agent as the source, callers are authorized by the agent (intentions);
        // nothing is allowed by a file rule.
        intentions: Intentions {
            default: Action::Deny,
            rules: Vec::new(),
        },
        upstreams,
        authority: None,
        // Consul's proxy config key for the inbound listener's limit.
        max_connections: int(&proxy.config, "max_inbound_connections")
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=1_000_000).contains(n))
            .unwrap_or(SidecarSpec::DEFAULT_MAX_CONNECTIONS),
    };
    Ok((spec, warnings))
}

/// The public listener: the registration's address and port, overridden by the proxy
/// config's `bind_address`/`bind_port` as Consul's Envoy listener does (agent/xds/listeners.go).
fn public_listener(svc: &AgentService, warnings: &mut Vec<String>) -> Option<SocketAddr> {
    let config = &svc.proxy.config;
    let address = text(config, "bind_address").unwrap_or_else(|| svc.address.clone());
    let port = int(config, "bind_port")
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(svc.port);
    if port == 0 {
        return None;
    }
    let ip = if address.is_empty() {
        IpAddr::from([0, 0, 0, 0])
    } else if let Ok(ip) = address.parse::<IpAddr>() {
        ip
    } else {
        warnings.push(format!(
            "sidecar {:?}: address {address:?} is not an IP address to listen on; listening on 0.0.0.0:{port}",
            svc.id
        ));
        IpAddr::from([0, 0, 0, 0])
    };
    Some(SocketAddr::new(ip, port))
}

fn local_service(proxy: &ProxyConfig) -> Option<Endpoint> {
    if proxy.local_service_port == 0 {
        return None;
    }
    let host = non_empty(&proxy.local_service_address, "127.0.0.1");
    endpoint(host, proxy.local_service_port)
}

/// `host` and `port` as a dialable endpoint (IPv6 literals included).
pub fn endpoint(host: &str, port: u16) -> Option<Endpoint> {
    if port == 0 {
        return None;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(Endpoint::Addr(SocketAddr::new(ip, port))),
        Err(_) => format!("{host}:{port}").parse().ok(),
    }
}

fn upstream(u: &Upstream, here: &Here) -> Result<UpstreamSpec, UpstreamError> {
    if !u.destination_type.is_empty() && u.destination_type != "service" {
        return Err(UpstreamError::DestinationType(u.destination_type.clone()));
    }
    if !u.destination_peer.is_empty() {
        return Err(UpstreamError::Peering);
    }
    let label = |key: &'static str, v: &str| {
        if is_label(v) {
            Ok(v.to_owned())
        } else {
            Err(UpstreamError::Name {
                key,
                value: v.to_owned(),
            })
        }
    };
    let name = label("destination_name", &u.destination_name)?;
    let namespace = label(
        "destination_namespace",
        non_empty(&u.destination_namespace, &here.namespace),
    )?;
    let partition = label(
        "destination_partition",
        non_empty(&u.destination_partition, &here.place.partition),
    )?;
    let datacenter = label(
        "datacenter",
        non_empty(&u.datacenter, &here.place.datacenter),
    )?;
    Ok(UpstreamSpec {
        destination_name: name,
        destination_namespace: namespace,
        place: Place::new(&datacenter, &partition),
        bind: upstream_bind(u)?,
        connect_timeout: millis(&u.config, "connect_timeout_ms"),
        mesh_gateway: u.mesh_gateway.parsed().map_err(UpstreamError::Mode)?,
        // Consul's upstream `config.limits.max_connections` (an Envoy circuit breaker there).
        max_connections: u
            .config
            .get("limits")
            .and_then(|l| l.get("max_connections"))
            .and_then(value_int)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=1_000_000).contains(n))
            .unwrap_or(UpstreamSpec::DEFAULT_MAX_CONNECTIONS),
        chain: None,
    })
}

/// Where the upstream listens for the local application: a TCP port, or a Unix socket.
fn upstream_bind(u: &Upstream) -> Result<Bind, UpstreamError> {
    if !u.local_bind_socket_path.is_empty() {
        let mode = match u.local_bind_socket_mode.as_str() {
            "" => None,
            m => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| UpstreamError::SocketMode(m.to_owned()))?,
            ),
        };
        return Ok(Bind::Unix {
            path: PathBuf::from(&u.local_bind_socket_path),
            mode,
        });
    }
    if u.local_bind_port == 0 {
        return Err(UpstreamError::NoBind);
    }
    let ip = non_empty(&u.local_bind_address, "127.0.0.1")
        .parse::<IpAddr>()
        .map_err(|_| UpstreamError::BindAddress(u.local_bind_address.clone()))?;
    Ok(Bind::Tcp(SocketAddr::new(ip, u.local_bind_port)))
}

/// The addresses a mesh gateway listens on, by Consul's rules (agent/xds/listeners.go): its
/// `Address:Port` unless `envoy_gateway_no_default_bind`, every tagged address with
/// `envoy_gateway_bind_tagged_addresses`, every `envoy_gateway_bind_addresses` entry; sorted
/// by name, the same address once. Host names cannot be bound and are left out.
pub fn gateway_binds(
    svc: &AgentService,
) -> Result<(Vec<SocketAddr>, Vec<String>), RegistrationError> {
    if svc.kind != KIND_MESH_GATEWAY {
        return Err(RegistrationError::Kind {
            id: svc.id.clone(),
            kind: svc.kind.clone(),
            want: "mesh-gateway",
        });
    }
    let config = &svc.proxy.config;
    let flag = |k: &str| {
        [
            format!("envoy_gateway_{k}"),
            format!("envoy_mesh_gateway_{k}"),
        ]
        .iter()
        .any(|key| config.get(key).is_some_and(truthy))
    };
    let mut named: BTreeMap<String, (String, u16)> = BTreeMap::new();
    if !flag("no_default_bind") {
        named.insert("default".into(), (svc.address.clone(), svc.port));
    }
    if flag("bind_tagged_addresses") {
        for (name, a) in &svc.tagged_addresses {
            named.insert(name.clone(), (a.address.clone(), a.port));
        }
    }
    let extra = config
        .get("envoy_gateway_bind_addresses")
        .or_else(|| config.get("envoy_mesh_gateway_bind_addresses"));
    if let Some(Value::Object(map)) = extra {
        for (name, v) in map {
            let address = v.get("address").and_then(Value::as_str).unwrap_or_default();
            let port = v
                .get("port")
                .and_then(value_int)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(0);
            named.insert(name.clone(), (address.to_owned(), port));
        }
    }
    let mut binds: Vec<SocketAddr> = Vec::new();
    let mut warnings = Vec::new();
    for (name, (address, port)) in named {
        let ip = if address.is_empty() {
            Ok(IpAddr::from([0, 0, 0, 0]))
        } else {
            address.parse::<IpAddr>()
        };
        match ip {
            Ok(_) if port == 0 => {
                warnings.push(format!("gateway bind address {name} has no port; left out"))
            }
            Ok(ip) => {
                let addr = SocketAddr::new(ip, port);
                if !binds.contains(&addr) {
                    binds.push(addr);
                }
            }
            Err(_) => warnings.push(format!(
                "gateway bind address {name} ({address}) is not an IP address; left out"
            )),
        }
    }
    if binds.is_empty() {
        return Err(RegistrationError::NoListenAddress { id: svc.id.clone() });
    }
    Ok((binds, warnings))
}

/// The gateway's `connect_timeout_ms` from its proxy config, if set.
pub fn gateway_connect_timeout(svc: &AgentService) -> Option<Duration> {
    millis(&svc.proxy.config, "connect_timeout_ms")
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.as_str(), "true" | "1"),
        Value::Number(n) => n.as_i64().is_some_and(|n| n != 0),
        _ => false,
    }
}

/// Consul reads its opaque config weakly typed: numbers may come as JSON numbers (integer or
/// float) or as strings.
fn value_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn int(config: &Map<String, Value>, key: &str) -> Option<i64> {
    config.get(key).and_then(value_int)
}

fn text(config: &Map<String, Value>, key: &str) -> Option<String> {
    config
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A timeout in milliseconds from an opaque config, within 1 ms and a day.
fn millis(config: &Map<String, Value>, key: &str) -> Option<Duration> {
    int(config, key)
        .filter(|ms| (1..=86_400_000).contains(ms))
        .map(|ms| Duration::from_millis(ms.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::super::example;
    use super::*;
    use crate::mesh::mode::Mode;

    fn here() -> Here {
        Here {
            place: Place::new("dc1", "default"),
            namespace: "default".into(),
            trust_domain: "a1499528-fbf6-df7b-05e5-ae81e1873fc4.consul".into(),
        }
    }

    fn parse(name: &str) -> AgentService {
        serde_json::from_str(&example(name)).unwrap()
    }

    #[test]
    fn sidecar_example_field_by_field() {
        let svc = parse("agent-service-sidecar.json");
        assert_eq!(svc.kind, "connect-proxy");
        assert_eq!(svc.id, "web-sidecar-proxy");
        assert_eq!((svc.address.as_str(), svc.port), ("10.0.1.15", 21000));
        assert_eq!(svc.tagged_addresses["lan_ipv4"].port, 21000);
        assert_eq!((svc.namespace(), svc.partition()), ("default", "default"));
        assert_eq!(svc.datacenter, "dc1");
        assert_eq!(svc.proxy.destination_service_id, "web");
        assert_eq!(svc.proxy.upstreams.len(), 4);
        let billing = &svc.proxy.upstreams[1];
        assert_eq!(billing.destination_partition, "finance");
        assert_eq!(billing.destination_namespace, "default");

        let (spec, warnings) = sidecar(&svc, &here()).unwrap();
        assert_eq!(spec.service, "web");
        // bind_address in the proxy config overrides the registration's address.
        assert_eq!(spec.public_listener, Some("0.0.0.0:21000".parse().unwrap()));
        assert_eq!(spec.local_service_address.to_string(), "127.0.0.1:8080");
        assert_eq!(spec.local_connect_timeout, Duration::from_millis(5000));
        assert_eq!(spec.mesh_gateway, Some(Mode::Local));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("geo-db") && warnings[0].contains("prepared_query"));

        let names: Vec<&str> = spec
            .upstreams
            .iter()
            .map(|u| u.destination_name.as_str())
            .collect();
        assert_eq!(names, ["api", "billing", "cache"]);
        let api = &spec.upstreams[0];
        assert_eq!(api.place, Place::new("dc2", "default"));
        assert_eq!(api.bind.to_string(), "127.0.0.1:9191");
        assert_eq!(api.connect_timeout, Some(Duration::from_millis(3000)));
        assert_eq!(api.mesh_gateway, Some(Mode::Remote));
        let billing = &spec.upstreams[1];
        assert_eq!(billing.place, Place::new("dc1", "finance"));
        assert_eq!(billing.destination_namespace, "default");
        assert_eq!(billing.bind.to_string(), "127.0.0.1:9192");
        assert_eq!(billing.mesh_gateway, Some(Mode::Local));
        let cache = &spec.upstreams[2];
        assert_eq!(
            cache.bind,
            Bind::Unix {
                path: "/run/web/cache.sock".into(),
                mode: Some(0o700)
            }
        );
        assert_eq!(cache.place, Place::new("dc1", "default"));
    }

    /// The shape Consul 1.8.7 (Debian bullseye) answers: no Datacenter, no Namespace, an empty
    /// Address, no TaggedAddresses, no Config.
    #[test]
    fn sidecar_from_consul_1_8() {
        let svc = parse("agent-service-sidecar-1.8.7.json");
        assert_eq!(svc.datacenter, "");
        let (spec, warnings) = sidecar(&svc, &here()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(spec.public_listener, Some("0.0.0.0:21000".parse().unwrap()));
        assert_eq!(spec.upstreams[0].place, Place::new("dc1", "default"));
        assert_eq!(spec.upstreams[0].mesh_gateway, None);
        assert_eq!(spec.mesh_gateway, None);
    }

    #[test]
    fn refuses_what_is_not_a_sidecar() {
        let gw = parse("agent-service-mesh-gateway.json");
        assert!(sidecar(&gw, &here())
            .unwrap_err()
            .to_string()
            .contains("not a sidecar"));
        let mut bad = parse("agent-service-sidecar.json");
        bad.proxy.mesh_gateway.mode = "sideways".into();
        assert!(sidecar(&bad, &here())
            .unwrap_err()
            .to_string()
            .contains("sideways"));
        let mut bad = parse("agent-service-sidecar.json");
        bad.proxy.destination_service_name = "a.b".into();
        assert!(sidecar(&bad, &here()).is_err());
    }

    #[test]
    fn gateway_example_binds_tagged_addresses() {
        let svc = parse("agent-service-mesh-gateway.json");
        assert_eq!(svc.meta["consul-wan-federation"], "1");
        assert_eq!(svc.tagged_addresses["wan"].address, "198.51.100.5");
        let (binds, warnings) = gateway_binds(&svc).unwrap();
        // no_default_bind + bind_tagged_addresses: lan, lan_ipv4 (same as lan), wan,
        // wan_ipv4 (same as lan) — sorted by name, duplicates dropped.
        let shown: Vec<String> = binds.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.1.5:8443", "198.51.100.5:443"]);
        assert!(warnings.is_empty());
        assert_eq!(
            gateway_connect_timeout(&svc),
            Some(Duration::from_millis(5000))
        );

        let mut plain = svc.clone();
        plain.proxy.config.clear();
        let (binds, _) = gateway_binds(&plain).unwrap();
        assert_eq!(binds, ["10.0.1.5:8443".parse().unwrap()]);

        let mut extra = plain.clone();
        extra.proxy.config.insert(
            "envoy_gateway_bind_addresses".into(),
            serde_json::json!({"all": {"address": "0.0.0.0", "port": "9443"}, "lb": {"address": "gw.example.com", "port": 443}}),
        );
        extra
            .proxy
            .config
            .insert("envoy_gateway_no_default_bind".into(), Value::Bool(true));
        let (binds, warnings) = gateway_binds(&extra).unwrap();
        assert_eq!(binds, ["0.0.0.0:9443".parse().unwrap()]);
        assert!(warnings[0].contains("gw.example.com"), "{warnings:?}");

        let sidecar_svc = parse("agent-service-sidecar.json");
        assert!(gateway_binds(&sidecar_svc).is_err());
    }

    #[test]
    fn agent_services_example_parses() {
        let all: BTreeMap<String, AgentService> =
            serde_json::from_str(&example("agent-services.json")).unwrap();
        assert_eq!(all["web"].kind, "");
        assert_eq!(all["web"].port, 8080);
        let proxy = &all["web-sidecar-proxy"];
        assert_eq!(proxy.proxy.destination_service_name, "web");
        assert_eq!(proxy.proxy.upstreams[0].datacenter, "dc2");
        assert_eq!(proxy.proxy.upstreams[0].mesh_gateway.mode, "remote");
    }
}
