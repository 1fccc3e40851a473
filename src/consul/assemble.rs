//! From the agent's answers to a `Snapshot`: which keys are needed given what is known so
//! far (each answer can reveal more: the registration names upstreams, their modes name
//! gateway places, the catalog names services), and the snapshot once every one is settled.
//! Pure: the follower feeds it answers; tests feed it example bodies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::api::ca::{identity, CaError, CaRoots};
use super::api::discovery_chain::ChainError;
use super::api::federation;
use super::api::health::to_dial;
use super::api::resolver;
use super::api::service::{self, AgentService, RegistrationError, KIND_MESH_GATEWAY, KIND_SIDECAR};
use super::watch::{Answer, Key};
use crate::config::consul::settings::Settings;
use crate::mesh::chain::Chain;
use crate::mesh::config_entries::{target_key, ConfigEntries};
use crate::mesh::mode::{via, Mode, Via};
use crate::mesh::place::DEFAULT_PARTITION;
use crate::mesh::plan::target_mode;
use crate::mesh::sidecar::{SidecarSpec, UpstreamSpec};
use crate::mesh::snapshot::{
    Catalog, CatalogGateways, CatalogService, GatewaySettings, Health, Here, Instance, Snapshot,
    WanFederation,
};
use crate::mesh::Place;
use crate::names::{is_label, SpiffeId};

/// A gateway follows every service name of its partition (a sidecar proxy's name among
/// them) with a fixed number of connections; beyond this many names the rest get no route
/// (and a warning), which bounds the memory a runaway catalog can take.
pub const MAX_ROUTED_SERVICES: usize = 10_000;
pub const MAX_DATACENTERS: usize = 100;
pub const MAX_PARTITIONS: usize = 100;
/// Service names of kind `mesh-gateway` followed per place (each is one watch).
pub const MAX_GATEWAY_NAMES: usize = 8;

/// What the follower knows: answers, and keys the agent refused with no earlier answer
/// (with the agent's reason, as shown in the log).
pub struct Known<'a> {
    pub answers: &'a BTreeMap<Key, Answer>,
    pub refused: &'a BTreeMap<Key, String>,
}

impl Known<'_> {
    /// Answered, or refused where going on without it is possible.
    pub fn settled(&self, key: &Key) -> bool {
        self.answers.contains_key(key) || (self.refused.contains_key(key) && !key.is_core())
    }

    fn registration(&self, id: Option<&String>, kind: &str) -> Option<&AgentService> {
        let key = Key::Service { id: id?.clone() };
        match self.answers.get(&key) {
            Some(Answer::Service(Some(svc))) if svc.kind == kind => Some(svc.as_ref()),
            _ => None,
        }
    }
}

fn leaf_key(svc: &AgentService) -> Key {
    Key::Leaf {
        service: svc.proxy.destination_service_name.clone(),
        namespace: svc.namespace().to_owned(),
        partition: svc.partition().to_owned(),
    }
}

/// Where this host sits: the registration's datacenter (Consul 1.9+), else the one in our
/// leaf's SPIFFE ID (issued by the local datacenter), else the agent's own configuration.
fn place(s: &Settings, k: &Known<'_>) -> Option<(Place, String)> {
    let sidecar = k.registration(s.sidecar_service_id.as_ref(), KIND_SIDECAR);
    let gateway = k.registration(s.gateway_service_id.as_ref(), KIND_MESH_GATEWAY);
    let reg = sidecar.or(gateway)?;
    let from_leaf = sidecar.and_then(|svc| match k.answers.get(&leaf_key(svc)) {
        Some(Answer::Leaf(leaf)) => match leaf.spiffe_id() {
            Some(SpiffeId::Service { datacenter, .. }) => Some(datacenter),
            _ => None,
        },
        _ => None,
    });
    let from_agent = match k.answers.get(&Key::AgentSelf) {
        Some(Answer::AgentSelf { datacenter, .. }) => Some(datacenter.clone()),
        _ => None,
    };
    let dc = Some(reg.datacenter.clone())
        .filter(|d| !d.is_empty())
        .or(from_leaf)
        .or(from_agent)
        .filter(|d| is_label(d))?;
    Some((Place::new(&dc, reg.partition()), reg.namespace().to_owned()))
}

/// The namespace this host's registration is in, once known.
pub fn namespace(s: &Settings, k: &Known<'_>) -> Option<String> {
    place(s, k).map(|(_, ns)| ns)
}

/// Whether the agent is Consul Enterprise: its registrations carry their namespace and
/// partition, which Community Edition leaves out (and it refuses any `ns=` with a 400).
pub fn enterprise(s: &Settings, k: &Known<'_>) -> bool {
    let sidecar = k.registration(s.sidecar_service_id.as_ref(), KIND_SIDECAR);
    let gateway = k.registration(s.gateway_service_id.as_ref(), KIND_MESH_GATEWAY);
    sidecar
        .into_iter()
        .chain(gateway)
        .any(|r| !r.namespace.is_empty() || !r.partition.is_empty())
}

fn here_of(place: Place, namespace: String, trust_domain: String) -> Here {
    Here {
        place,
        namespace,
        trust_domain,
    }
}

/// Every key whose answer the snapshot needs, given what is known so far.
pub fn needed(s: &Settings, k: &Known<'_>) -> BTreeSet<Key> {
    let mut keys = BTreeSet::from([Key::Roots]);
    let sidecar = k.registration(s.sidecar_service_id.as_ref(), KIND_SIDECAR);
    let gateway = k.registration(s.gateway_service_id.as_ref(), KIND_MESH_GATEWAY);
    for id in s.sidecar_service_id.iter().chain(&s.gateway_service_id) {
        keys.insert(Key::Service { id: id.clone() });
    }
    if let Some(svc) = sidecar {
        keys.insert(leaf_key(svc));
    }
    let Some((place, namespace)) = place(s, k) else {
        let waiting_for_leaf = sidecar.is_some_and(|svc| !k.settled(&leaf_key(svc)));
        if (sidecar.is_some() || gateway.is_some()) && !waiting_for_leaf {
            keys.insert(Key::AgentSelf);
        }
        return keys;
    };
    if k.answers.contains_key(&Key::AgentSelf) {
        keys.insert(Key::AgentSelf);
    }
    let here = here_of(place, namespace, String::new());
    if let Some(Ok((spec, _))) = sidecar.map(|svc| service::sidecar(svc, &here)) {
        sidecar_keys(s, k, &here, &spec, &mut keys);
    }
    if let Some(gw) = gateway {
        gateway_keys(s, k, &here, &mut keys);
        if federation::carries_servers(gw) && here.place.is_default_partition() {
            // The servers to route to, the other datacenters' gateways without asking
            // through them, and the DNS domain server names end in.
            keys.extend([Key::Servers, Key::FederationStates, Key::Domain]);
        }
    }
    keys
}

fn sidecar_keys(
    s: &Settings,
    k: &Known<'_>,
    here: &Here,
    spec: &SidecarSpec,
    keys: &mut BTreeSet<Key>,
) {
    let mut entry_keys = vec![
        Key::ProxyDefaults {
            partition: here.place.partition.clone(),
        },
        Key::ServiceDefaults {
            service: spec.service.clone(),
            namespace: here.namespace.clone(),
            partition: here.place.partition.clone(),
        },
    ];
    for u in &spec.upstreams {
        entry_keys.push(Key::ServiceDefaults {
            service: u.destination_name.clone(),
            namespace: u.destination_namespace.clone(),
            partition: u.place.partition.clone(),
        });
        if u.place.partition != here.place.partition {
            entry_keys.push(Key::ProxyDefaults {
                partition: u.place.partition.clone(),
            });
        }
    }
    let entries_known = entry_keys.iter().all(|key| k.settled(key));
    keys.extend(entry_keys);
    if !entries_known {
        // Modes are not known yet, nor which gateways they need; nor the chains' overrides.
        for u in &spec.upstreams {
            keys.insert(connect_key(
                &u.destination_name,
                &u.destination_namespace,
                &u.place,
            ));
        }
        return;
    }
    let entries = config_entries(k, here, spec);
    let mut gateways = |place: &Place, mode| {
        if let Via::LocalGateways(p) | Via::RemoteGateways(p) = via(&here.place, place, mode) {
            keys.insert(Key::Gateways {
                place: p,
                name: s.mesh_gateway_service.clone(),
            });
        }
    };
    let mut wanted = Vec::new();
    for u in &spec.upstreams {
        let key = chain_key(&entries, spec, u);
        match chain_of(k, &key) {
            // Each target's instances, and the gateways its mode needs.
            Some(Ok(chain)) => {
                for (t, c) in chain.targets.iter().zip(&chain.compiled) {
                    let place = Place::new(&t.datacenter, &t.partition);
                    let levels = entries.target_mode_levels(spec, u, t).resolve();
                    let (mode, _) = target_mode(levels, Some(c), &here.place, &place);
                    gateways(&place, mode);
                    wanted.push(connect_key(&t.service, &t.namespace, &place));
                }
            }
            // No chain (yet, or refused): the destination itself, as sidegate compiles a
            // chain without resolvers.
            _ => {
                let (mode, _) = entries.mode_levels(spec, u).resolve();
                gateways(&u.place, mode);
                wanted.push(connect_key(
                    &u.destination_name,
                    &u.destination_namespace,
                    &u.place,
                ));
            }
        }
        wanted.push(key);
    }
    keys.extend(wanted);
}

fn connect_key(service: &str, namespace: &str, place: &Place) -> Key {
    Key::Connect {
        service: service.to_owned(),
        namespace: namespace.to_owned(),
        place: place.clone(),
    }
}

/// The key of `u`'s chain: compiled by Consul with the mode the upstream and the downstream
/// set (as the agent's own proxies ask for it) and the upstream's connect timeout.
fn chain_key(entries: &ConfigEntries, spec: &SidecarSpec, u: &UpstreamSpec) -> Key {
    let mesh_gateway = match entries.chain_override(spec, u) {
        None => "",
        Some(Mode::None) => "none",
        Some(Mode::Local) => "local",
        Some(Mode::Remote) => "remote",
    };
    Key::Chain {
        service: u.destination_name.clone(),
        namespace: u.destination_namespace.clone(),
        place: u.place.clone(),
        mesh_gateway: mesh_gateway.to_owned(),
        connect_timeout_ms: u
            .connect_timeout
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// The chain Consul compiled for `key`, if it answered.
fn chain_of(k: &Known<'_>, key: &Key) -> Option<Result<Chain, ChainError>> {
    match k.answers.get(key) {
        Some(Answer::Chain(c)) => Some(c.to_chain()),
        _ => None,
    }
}

fn gateway_keys(s: &Settings, k: &Known<'_>, here: &Here, keys: &mut BTreeSet<Key>) {
    let services = Key::Services {
        place: here.place.clone(),
    };
    if let Some(Answer::Names(names)) = k.answers.get(&services) {
        // Each in its namespace: on Enterprise the fleet follows every namespace of the
        // partition; Community Edition has one.
        let routed = names
            .iter()
            .map(|n| super::fleet::split(n, &here.namespace))
            .filter(|(ns, name)| is_label(ns) && is_label(name))
            .take(MAX_ROUTED_SERVICES);
        for (namespace, name) in routed {
            keys.insert(Key::Connect {
                service: name.to_owned(),
                namespace: namespace.to_owned(),
                place: here.place.clone(),
            });
        }
    }
    keys.insert(services);
    // The other partitions of this datacenter (Enterprise), through their gateways' WAN
    // addresses: a sidecar here in mode `local` reaches them through this gateway.
    if let Some(Answer::Names(partitions)) = k.answers.get(&Key::Partitions) {
        let others = partitions
            .iter()
            .filter(|p| !p.eq_ignore_ascii_case(&here.place.partition) && is_label(p));
        for p in others.take(MAX_PARTITIONS) {
            gateways_by_kind(s, k, Place::new(&here.place.datacenter, p), keys);
        }
    }
    keys.insert(Key::Partitions);
    // The partition's subsets: which names the gateway routes, and to which instances.
    keys.insert(Key::Resolvers {
        partition: here.place.partition.clone(),
    });
    // WAN federation is default-partition only (Consul's mesh gateways): other datacenters are
    // reached through their default partition's gateways.
    if here.place.partition == DEFAULT_PARTITION {
        if let Some(Answer::Names(dcs)) = k.answers.get(&Key::Datacenters) {
            let others = dcs
                .iter()
                .filter(|dc| **dc != here.place.datacenter && is_label(dc));
            for dc in others.take(MAX_DATACENTERS) {
                gateways_by_kind(s, k, Place::new(dc, DEFAULT_PARTITION), keys);
            }
        }
        keys.insert(Key::Datacenters);
    }
}

/// A gateway finds the gateways of another place by kind (`mesh-gateway`), whatever name
/// they were registered under, as Consul's own gateways do; only while the agent refuses the
/// list (no `service:read` on them all) by the configured name.
fn gateways_by_kind(s: &Settings, k: &Known<'_>, place: Place, keys: &mut BTreeSet<Key>) {
    let names_key = Key::GatewayNames {
        place: place.clone(),
    };
    let names: Vec<String> = match k.answers.get(&names_key) {
        Some(Answer::Names(names)) => names
            .iter()
            .filter(|n| is_label(n))
            .take(MAX_GATEWAY_NAMES)
            .cloned()
            .collect(),
        _ if k.refused.contains_key(&names_key) => vec![s.mesh_gateway_service.clone()],
        _ => Vec::new(),
    };
    for name in names {
        keys.insert(Key::Gateways {
            place: place.clone(),
            name,
        });
    }
    keys.insert(names_key);
}

/// Central config as the agent reported it. Refused or absent entries are simply unset. A
/// target's entry is keyed by name like the file's; the downstream's own wins a clash. The
/// downstream's entry is read in the registration's namespace and partition, so those are
/// what its overrides without one mean.
fn config_entries(k: &Known<'_>, here: &Here, spec: &SidecarSpec) -> ConfigEntries {
    let mut entries = ConfigEntries {
        downstream_namespace: here.namespace.clone(),
        downstream_partition: here.place.partition.clone(),
        ..ConfigEntries::default()
    };
    let mode_of = |partition: &str| match k.answers.get(&Key::ProxyDefaults {
        partition: partition.to_owned(),
    }) {
        Some(Answer::ProxyDefaults(Some(pd))) => pd.mode().ok().flatten(),
        _ => None,
    };
    entries.proxy_defaults = mode_of(&here.place.partition);
    for u in &spec.upstreams {
        if u.place.partition != here.place.partition {
            if let Some(m) = mode_of(&u.place.partition) {
                entries
                    .partition_proxy_defaults
                    .insert(u.place.partition.clone(), m);
            }
        }
    }
    entries.targets_by_place = true;
    let defaults = |service: &String, namespace: &String, partition: &String| {
        let key = Key::ServiceDefaults {
            service: service.clone(),
            namespace: namespace.clone(),
            partition: partition.clone(),
        };
        match k.answers.get(&key) {
            Some(Answer::ServiceDefaults(Some(sd))) => sd.to_mesh().ok(),
            _ => None,
        }
    };
    for u in &spec.upstreams {
        let (name, ns, part) = (
            &u.destination_name,
            &u.destination_namespace,
            &u.place.partition,
        );
        if let Some(m) = defaults(name, ns, part) {
            entries
                .target_service_defaults
                .insert(target_key(name, ns, part), m);
        }
    }
    if let Some(m) = defaults(&spec.service, &here.namespace, &here.place.partition) {
        entries.service_defaults.insert(spec.service.clone(), m);
    }
    entries
}

/// Why the answers make no snapshot yet, or none at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// Needed keys not settled yet.
    Waiting(Vec<Key>),
    NoRoots,
    NoPlace,
    NoLeaf {
        service: String,
    },
    /// New roots, old leaf (or the other way round) right after the cluster changed.
    LeafOfOtherTrustDomain {
        leaf: String,
        roots: String,
    },
    NotRegistered {
        id: String,
    },
    WrongKind {
        id: String,
        kind: String,
        want: &'static str,
    },
    Ca(CaError),
    Registration(RegistrationError),
}

impl fmt::Display for Incomplete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incomplete::Waiting(keys) => {
                f.write_str("waiting for ")?;
                for (n, key) in keys.iter().enumerate() {
                    let comma = if n == 0 { "" } else { ", " };
                    write!(f, "{comma}{key:?}")?;
                }
                Ok(())
            }
            Incomplete::NoRoots => f.write_str("no CA roots yet"),
            Incomplete::NoPlace => f.write_str("the agent's datacenter is not known yet"),
            Incomplete::NoLeaf { service } => write!(f, "no leaf certificate for {service} yet"),
            Incomplete::LeafOfOtherTrustDomain { leaf, roots } => write!(
                f,
                "the leaf is of trust domain {leaf}, the roots of {roots}: waiting for a new leaf"
            ),
            Incomplete::NotRegistered { id } => write!(
                f,
                "no service with ID {id:?} is registered on the agent; register it (consul services register)"
            ),
            Incomplete::WrongKind { id, kind, want } => write!(
                f,
                "the agent's service {id:?} is of kind {kind:?}, not {want}"
            ),
            Incomplete::Ca(e) => write!(f, "{e}"),
            Incomplete::Registration(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Incomplete {}

impl From<CaError> for Incomplete {
    fn from(e: CaError) -> Incomplete {
        Incomplete::Ca(e)
    }
}

impl From<RegistrationError> for Incomplete {
    fn from(e: RegistrationError) -> Incomplete {
        Incomplete::Registration(e)
    }
}

/// The snapshot, once `needed` keys are all settled; `Err` says what is missing or wrong.
/// Warnings are about the agent's data (left-out upstreams, unreadable gateways).
pub fn snapshot(
    s: &Settings,
    base: &Snapshot,
    k: &Known<'_>,
) -> Result<(Snapshot, Vec<String>), Incomplete> {
    let missing: Vec<Key> = needed(s, k)
        .into_iter()
        .filter(|key| !k.settled(key))
        .collect();
    if !missing.is_empty() {
        return Err(Incomplete::Waiting(missing));
    }
    let Some(Answer::Roots(roots)) = k.answers.get(&Key::Roots) else {
        return Err(Incomplete::NoRoots);
    };
    let trust_domain = roots.trust_domain()?;
    let sidecar = match &s.sidecar_service_id {
        Some(id) => Some(registration(k, id, KIND_SIDECAR)?),
        None => None,
    };
    let gateway = match &s.gateway_service_id {
        Some(id) => Some(registration(k, id, KIND_MESH_GATEWAY)?),
        None => None,
    };
    let (place, namespace) = place(s, k).ok_or(Incomplete::NoPlace)?;
    let here = here_of(place, namespace, trust_domain);
    let mut warnings = Vec::new();
    let mut snap = Snapshot {
        here: here.clone(),
        identity: None,
        gateway: None,
        sidecar: None,
        config_entries: ConfigEntries::default(),
        catalog: catalog(k, &here, &mut warnings),
    };
    if let Some(svc) = sidecar {
        add_sidecar(&mut snap, svc, k, roots, &mut warnings)?;
    }
    if let Some(svc) = gateway {
        snap.gateway = Some(gateway_settings(svc, base, &here, k, &mut warnings)?);
        if federation::carries_servers(svc) && here.place.is_default_partition() {
            federate(&mut snap.catalog, k, &here, &mut warnings);
        }
        gateway_resolvers(&mut snap.config_entries, k, &here, &mut warnings);
    }
    Ok((snap, warnings))
}

/// The sidecar's part of the snapshot: its spec, identity and central config.
fn add_sidecar(
    snap: &mut Snapshot,
    svc: &AgentService,
    k: &Known<'_>,
    roots: &CaRoots,
    warnings: &mut Vec<String>,
) -> Result<(), Incomplete> {
    let here = &snap.here;
    let (mut spec, w) = service::sidecar(svc, here)?;
    warnings.extend(w);
    let Some(Answer::Leaf(leaf)) = k.answers.get(&leaf_key(svc)) else {
        return Err(Incomplete::NoLeaf {
            service: spec.service,
        });
    };
    let id = identity(leaf, roots)?;
    // Right after the cluster changed (a new CA, an agent restarted with fresh state) the
    // roots can be new while the leaf is not yet: serving that pair would fail every
    // handshake, so wait for the leaf of this trust domain.
    if let SpiffeId::Service { trust_domain, .. } = &id.spiffe_id {
        if !trust_domain.eq_ignore_ascii_case(&here.trust_domain) {
            return Err(Incomplete::LeafOfOtherTrustDomain {
                leaf: trust_domain.clone(),
                roots: here.trust_domain.clone(),
            });
        }
    }
    snap.identity = Some(id);
    snap.config_entries = config_entries(k, here, &spec);
    // Each upstream's chain as Consul compiled it; without one (refused, or not a chain
    // sidegate can carry) the plan dials the destination itself.
    let chain_keys: Vec<Key> = spec
        .upstreams
        .iter()
        .map(|u| chain_key(&snap.config_entries, &spec, u))
        .collect();
    for (u, key) in spec.upstreams.iter_mut().zip(&chain_keys) {
        match chain_of(k, key) {
            Some(Ok(chain)) => u.chain = Some(chain),
            Some(Err(e)) => warnings.push(format!(
                "upstream {}: Consul's discovery chain is not used ({e}): dialling {} itself",
                u.destination_name, u.destination_name
            )),
            None => {}
        }
    }
    crate::mesh::mode::attribute_merged_levels(&mut spec, &snap.config_entries);
    snap.sidecar = Some(spec);
    Ok(())
}

/// The gateway's settings: the file's `[gateway]` knobs, else the registration's.
fn gateway_settings(
    svc: &AgentService,
    base: &Snapshot,
    here: &Here,
    k: &Known<'_>,
    warnings: &mut Vec<String>,
) -> Result<GatewaySettings, Incomplete> {
    // The file's [gateway] overrides the registration key by key: what it leaves out, the
    // registration (or the default) gives.
    let mut settings = base.gateway.clone().unwrap_or_else(default_gateway);
    if !settings.connect_timeout_set {
        if let Some(t) = service::gateway_connect_timeout(svc) {
            settings.connect_timeout = t;
        }
    }
    let services = Key::Services {
        place: here.place.clone(),
    };
    if let Some(Answer::Names(names)) = k.answers.get(&services) {
        if names.len() > MAX_ROUTED_SERVICES {
            warnings.push(format!(
                "the partition has {} services; the gateway routes the first {MAX_ROUTED_SERVICES} by name only",
                names.len()
            ));
        }
    }
    if settings.listen.is_empty() {
        let (binds, w) = service::gateway_binds(svc)?;
        warnings.extend(w);
        settings.listen = binds;
    }
    Ok(settings)
}

/// The partition's resolvers, for the gateway's subset routes. Until the agent answers (or
/// when it refuses: no `service:read`), the subsets are not known and a subset label of a
/// known service is passed to it, as before resolvers were read.
fn gateway_resolvers(
    entries: &mut ConfigEntries,
    k: &Known<'_>,
    here: &Here,
    warnings: &mut Vec<String>,
) {
    let key = Key::Resolvers {
        partition: here.place.partition.clone(),
    };
    match k.answers.get(&key) {
        Some(Answer::Resolvers(list)) => {
            let mut found = resolver::resolvers(list, warnings);
            // A sidecar in the same process keeps what it knew of other resolvers.
            entries.service_resolvers.append(&mut found);
            entries.resolvers_known = true;
        }
        _ => {
            if let Some(why) = k.refused.get(&key) {
                warnings.push(format!(
                    "the service-resolver entries are not readable ({why}): the gateway passes any subset label of a known service to it"
                ));
            }
        }
    }
}

fn registration<'a>(
    k: &'a Known<'_>,
    id: &str,
    kind: &'static str,
) -> Result<&'a AgentService, Incomplete> {
    match k.answers.get(&Key::Service { id: id.to_owned() }) {
        Some(Answer::Service(Some(svc))) if svc.kind == kind => Ok(svc.as_ref()),
        Some(Answer::Service(Some(svc))) => Err(Incomplete::WrongKind {
            id: id.to_owned(),
            kind: svc.kind.clone(),
            want: kind,
        }),
        _ => Err(Incomplete::NotRegistered { id: id.to_owned() }),
    }
}

fn default_gateway() -> GatewaySettings {
    use std::time::Duration;
    GatewaySettings {
        listen: Vec::new(),
        connect_timeout: Duration::from_millis(GatewaySettings::DEFAULT_CONNECT_TIMEOUT_MS),
        handshake_timeout: Duration::from_millis(GatewaySettings::DEFAULT_HANDSHAKE_TIMEOUT_MS),
        idle_timeout: Duration::from_millis(GatewaySettings::DEFAULT_IDLE_TIMEOUT_MS),
        max_connections: GatewaySettings::DEFAULT_MAX_CONNECTIONS,
        max_pending_handshakes: GatewaySettings::default_max_pending_handshakes(
            GatewaySettings::DEFAULT_MAX_CONNECTIONS,
        ),
        max_client_hello_bytes: GatewaySettings::DEFAULT_MAX_CLIENT_HELLO_BYTES,
        splice: Default::default(),
        connect_timeout_set: false,
    }
}

/// Instances of every watched service (LAN addresses from inside their place, WAN from
/// outside, as Consul's `BestAddress`) and gateways of every watched place.
fn catalog(k: &Known<'_>, here: &Here, warnings: &mut Vec<String>) -> Catalog {
    let mut services = Vec::new();
    let mut gateways: BTreeMap<Place, CatalogGateways> = BTreeMap::new();
    for (key, answer) in k.answers {
        let Answer::Instances(list) = answer else {
            continue;
        };
        match key {
            Key::Connect {
                service,
                namespace,
                place,
            } if !list.is_empty() => {
                let wan = *place != here.place;
                let (dial, all_failing) = to_dial(list);
                if all_failing {
                    warnings.push(format!(
                        "every instance of {service} ({place}) fails its health checks: dialling them all anyway"
                    ));
                }
                let mut instances: Vec<Instance> =
                    dial.iter().map(|i| mesh_instance(i, wan)).collect();
                instances.dedup_by(|a, b| a.address == b.address);
                services.push(CatalogService {
                    name: service.clone(),
                    namespace: namespace.clone(),
                    place: place.clone(),
                    instances,
                });
            }
            // By the configured name (a sidecar's places) or found by kind (a gateway's):
            // the instances are of kind `mesh-gateway` either way.
            Key::Gateways { place, name } => {
                if list.is_empty() && place.partition != here.place.partition {
                    warnings.push(format!(
                        "no mesh gateways of {place} are visible: partition {} must export the {name} service to partition {} (exported-services), or none is registered or healthy",
                        place.partition, here.place.partition
                    ));
                }
                let g = gateways
                    .entry(place.clone())
                    .or_insert_with(|| CatalogGateways {
                        place: place.clone(),
                        lan: Vec::new(),
                        wan: Vec::new(),
                    });
                let (dial, all_failing) = to_dial(list);
                if all_failing {
                    warnings.push(format!(
                        "every mesh gateway of {place} fails its health checks: dialling them all anyway"
                    ));
                }
                for i in dial {
                    if !g.lan.contains(&i.lan) {
                        g.lan.push(i.lan.clone());
                    }
                    if !g.wan.contains(&i.wan) {
                        g.wan.push(i.wan.clone());
                    }
                }
            }
            _ => {}
        }
    }
    Catalog {
        services,
        gateways: gateways.into_values().collect(),
        wan_federation: None,
    }
}

/// One instance as the plan sees it: at its LAN address from inside its place, WAN from
/// outside, with what subset filters select on.
fn mesh_instance(i: &super::api::health::Instance, wan: bool) -> Instance {
    Instance {
        service: i.service.clone(),
        id: i.id.clone(),
        node: i.node.clone(),
        meta: i.meta.clone(),
        node_meta: i.node_meta.clone(),
        tags: i.tags.clone(),
        // Critical is already applied by `to_dial` (all dialled when all fail); warning
        // matters to `only_passing` subsets.
        health: if i.warning && i.healthy {
            Health::Warning
        } else {
            Health::Passing
        },
        ..Instance::at(if wan { i.wan.clone() } else { i.lan.clone() })
    }
}

/// A gateway registered to carry WAN federation (`consul-wan-federation = "1"`): this
/// datacenter's servers, the agent's domain, and other datacenters' gateways from the
/// federation states. Those win over the catalog's (`?dc=` answers) for a datacenter they
/// list: they are what Consul's servers dial, and they stay known while the WAN path the
/// catalog would be asked through is down. Default partition only.
fn federate(catalog: &mut Catalog, k: &Known<'_>, here: &Here, warnings: &mut Vec<String>) {
    let domain = match k.answers.get(&Key::Domain) {
        Some(Answer::AgentSelf { domain, .. }) => federation::domain(domain),
        _ => {
            if let Some(why) = k.refused.get(&Key::Domain) {
                warnings.push(format!(
                    "the agent's DNS domain is not known ({why}): server names are routed in {}",
                    federation::domain("")
                ));
            }
            federation::domain("")
        }
    };
    let servers = match k.answers.get(&Key::Servers) {
        Some(Answer::Instances(list)) => federation::servers(list),
        _ => Vec::new(),
    };
    if let Some(Answer::Federated(dcs)) = k.answers.get(&Key::FederationStates) {
        let others = dcs
            .iter()
            .filter(|(dc, _)| **dc != here.place.datacenter && is_label(dc));
        for (dc, list) in others.take(MAX_DATACENTERS) {
            let place = Place::new(dc, DEFAULT_PARTITION);
            let (dial, all_failing) = to_dial(list);
            if all_failing {
                warnings.push(format!(
                    "every WAN-federation mesh gateway of {place} fails its health checks: dialling them all anyway"
                ));
            }
            let mut g = CatalogGateways {
                place: place.clone(),
                lan: Vec::new(),
                wan: Vec::new(),
            };
            for i in dial {
                if !g.lan.contains(&i.lan) {
                    g.lan.push(i.lan.clone());
                }
                if !g.wan.contains(&i.wan) {
                    g.wan.push(i.wan.clone());
                }
            }
            match catalog.gateways.iter_mut().find(|c| c.place == place) {
                Some(c) => *c = g,
                None => catalog.gateways.push(g),
            }
        }
        catalog.gateways.sort_by(|a, b| a.place.cmp(&b.place));
    }
    catalog.wan_federation = Some(WanFederation { domain, servers });
}

#[cfg(test)]
#[path = "assemble_tests.rs"]
pub(super) mod tests;
