//! What is watched (`Key`), what the agent answered (`Answer`), and the thread that follows
//! one key with blocking queries and hands every new answer or error to the follower.

use std::collections::BTreeMap;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::api::ca::{CaRoots, LeafCert};
use super::api::config_entry::{ProxyDefaultsEntry, ServiceDefaultsEntry};
use super::api::discovery_chain::{self, CompiledChain};
use super::api::health::{instances, Instance};
use super::api::resolver::{self, ResolverEntry};
use super::api::service::{AgentService, KIND_MESH_GATEWAY};
use super::api::{catalog, federation, nullable};
use super::blocking::{next_index, Backoff, RateLimit, WAIT};
use super::client::{segment, Blocking, Client, Reply, Request};
use super::errors::ApiError;
use super::stop::Stop;
use crate::mesh::place::{DEFAULT_NAMESPACE, DEFAULT_PARTITION};
use crate::mesh::Place;

/// One thing followed on the agent.
// Externally tagged (serde's default) for the saved state: an internally or adjacently
// tagged enum costs tens of kilobytes of buffering code in the binary.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// `/v1/agent/service/:id`: the sidecar's or gateway's registration.
    Service { id: String },
    /// `/v1/agent/connect/ca/roots`.
    Roots,
    /// `/v1/agent/connect/ca/leaf/:service`.
    Leaf {
        service: String,
        namespace: String,
        partition: String,
    },
    /// `/v1/agent/self`: the agent's datacenter, when nothing else names it.
    AgentSelf,
    /// `/v1/health/connect/:service`: a service's healthy mesh instances in one place.
    Connect {
        service: String,
        namespace: String,
        place: Place,
    },
    /// `/v1/health/service/:name`: the mesh gateways of one place.
    Gateways { place: Place, name: String },
    /// `/v1/internal/ui/services`: the names of one place's services of kind `mesh-gateway`.
    GatewayNames { place: Place },
    /// `/v1/partitions` (Enterprise): the admin partitions of this datacenter.
    Partitions,
    /// `/v1/config/proxy-defaults/global` of a partition.
    ProxyDefaults { partition: String },
    /// `/v1/config/service-defaults/:service`.
    ServiceDefaults {
        service: String,
        namespace: String,
        partition: String,
    },
    /// `/v1/catalog/services`: every service name of one place (the gateway's routes).
    Services { place: Place },
    /// `/v1/catalog/datacenters`.
    Datacenters,
    /// `/v1/health/service/consul`: this datacenter's servers (WAN federation).
    Servers,
    /// `/v1/internal/federation-states/mesh-gateways`: every federated datacenter's gateways.
    FederationStates,
    /// `/v1/agent/self` for the DNS domain alone: unlike `AgentSelf`, a refusal (no
    /// `agent:read`) is not fatal — the domain is then Consul's default.
    Domain,
    /// `POST /v1/discovery-chain/:service?compile-dc=`: an upstream's chain compiled by
    /// Consul with the upstream's overrides. One per upstream; the chain's targets are
    /// followed with `Connect` keys.
    Chain {
        service: String,
        namespace: String,
        /// The upstream's datacenter (`compile-dc`) and partition.
        place: Place,
        /// `OverrideMeshGateway`: the mode word the upstream and the downstream set; empty
        /// for none.
        mesh_gateway: String,
        /// `OverrideConnectTimeout` in milliseconds; 0 for none.
        connect_timeout_ms: u64,
    },
    /// `/v1/config/service-resolver`: every resolver of a partition (a gateway's subsets).
    Resolvers { partition: String },
}

/// What the agent said for a key. One is kept per key (a gateway keeps one per service it
/// follows, and one more in its saved state), so every kind larger than a few words is boxed:
/// an answer is as large as its largest kind (unboxed, 296 bytes for a list of instances).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// `None`: no such registration on this agent (404).
    Service(Option<Box<AgentService>>),
    Roots(Box<CaRoots>),
    Leaf(Box<LeafCert>),
    AgentSelf {
        datacenter: String,
        /// The agent's DNS domain as configured (`consul.` by default); empty from older
        /// saved states.
        #[serde(default)]
        domain: String,
    },
    /// Shared: the saved state waiting for its snapshot to serve holds the same lists (one
    /// per service a gateway follows) without copying them.
    Instances(Arc<[Instance]>),
    /// `None`: no such entry (404).
    ProxyDefaults(Option<Box<ProxyDefaultsEntry>>),
    ServiceDefaults(Option<Box<ServiceDefaultsEntry>>),
    Names(Vec<String>),
    /// Datacenter → its mesh gateways.
    Federated(BTreeMap<String, Vec<Instance>>),
    Chain(Box<CompiledChain>),
    Resolvers(Vec<ResolverEntry>),
}

/// How a key's endpoint waits for change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Hash,
    Index,
    /// Not blocking: ask again after this long.
    Poll(Duration),
}

/// Consul's gateways refresh the datacenter list every 30 s; so do we.
const DATACENTERS_EVERY: Duration = Duration::from_secs(30);
const AGENT_SELF_EVERY: Duration = Duration::from_secs(300);

fn enterprise(mut req: Request, namespace: Option<&str>, partition: &str) -> Request {
    // Community Edition answers 400 to these even for "default": send them only when needed.
    if let Some(ns) = namespace.filter(|ns| *ns != DEFAULT_NAMESPACE) {
        req = req.param("ns", ns);
    }
    if partition != DEFAULT_PARTITION {
        req = req.param("partition", partition);
    }
    req
}

/// Why a reply holds no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// 404 from an endpoint where it does not mean "absent"; the agent's message.
    NotFound(String),
    /// Not the JSON the endpoint returns.
    Json(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::NotFound(message) => write!(f, "HTTP 404: {message}"),
            BodyError::Json(e) => f.write_str(e),
        }
    }
}

impl Key {
    fn request(&self) -> (Request, Style, Option<String>) {
        (self.http_request(), self.style(), self.body())
    }

    /// How the key is watched: blocking on the index or hash the agent returns, or polled
    /// (the agent offers no blocking query for these).
    fn style(&self) -> Style {
        match self {
            Key::Service { .. } => Style::Hash,
            Key::AgentSelf | Key::Domain => Style::Poll(AGENT_SELF_EVERY),
            Key::Datacenters | Key::Partitions => Style::Poll(DATACENTERS_EVERY),
            Key::Roots
            | Key::Leaf { .. }
            | Key::Connect { .. }
            | Key::Gateways { .. }
            | Key::ProxyDefaults { .. }
            | Key::ServiceDefaults { .. }
            | Key::Services { .. }
            | Key::Servers
            | Key::FederationStates
            | Key::Chain { .. }
            | Key::Resolvers { .. }
            | Key::GatewayNames { .. } => Style::Index,
        }
    }

    /// The endpoint and query that answer the key.
    fn http_request(&self) -> Request {
        match self {
            Key::Service { id } => Request::new(format!("/v1/agent/service/{}", segment(id))),
            Key::Roots => Request::new("/v1/agent/connect/ca/roots".into()),
            Key::Leaf {
                service,
                namespace,
                partition,
            } => enterprise(
                Request::new(format!("/v1/agent/connect/ca/leaf/{}", segment(service))),
                Some(namespace),
                partition,
            ),
            Key::AgentSelf | Key::Domain => Request::new("/v1/agent/self".into()),
            Key::Connect {
                service,
                namespace,
                place,
            } => enterprise(
                Request::new(format!("/v1/health/connect/{}", segment(service)))
                    .param("dc", &place.datacenter),
                Some(namespace),
                &place.partition,
            ),
            Key::Gateways { place, name } => enterprise(
                Request::new(format!("/v1/health/service/{}", segment(name)))
                    .param("dc", &place.datacenter),
                None,
                &place.partition,
            ),
            Key::ProxyDefaults { partition } => enterprise(
                Request::new("/v1/config/proxy-defaults/global".into()),
                None,
                partition,
            ),
            Key::ServiceDefaults {
                service,
                namespace,
                partition,
            } => enterprise(
                Request::new(format!("/v1/config/service-defaults/{}", segment(service))),
                Some(namespace),
                partition,
            ),
            Key::Services { place } => enterprise(
                Request::new("/v1/catalog/services".into()).param("dc", &place.datacenter),
                None,
                &place.partition,
            ),
            Key::Datacenters => Request::new("/v1/catalog/datacenters".into()),
            Key::Partitions => Request::new("/v1/partitions".into()),
            Key::Servers => Request::new("/v1/health/service/consul".into()),
            Key::FederationStates => {
                Request::new("/v1/internal/federation-states/mesh-gateways".into())
            }
            Key::Chain {
                service,
                namespace,
                place,
                ..
            } => enterprise(
                Request::new(format!("/v1/discovery-chain/{}", segment(service)))
                    .param("compile-dc", &place.datacenter),
                Some(namespace),
                &place.partition,
            ),
            Key::GatewayNames { place } => enterprise(
                Request::new("/v1/internal/ui/services".into()).param("dc", &place.datacenter),
                None,
                &place.partition,
            ),
            Key::Resolvers { partition } => enterprise(
                Request::new("/v1/config/service-resolver".into()),
                None,
                partition,
            ),
        }
    }

    /// The JSON body of keys asked with POST.
    fn body(&self) -> Option<String> {
        let Key::Chain {
            mesh_gateway,
            connect_timeout_ms,
            ..
        } = self
        else {
            return None;
        };
        let mut body = serde_json::Map::new();
        // sidegate carries TCP: the chain of a service whose protocol is HTTP would start
        // at its routers and splitters, which act on requests. Compiled as TCP it is the
        // resolver's chain, the part that applies to connections.
        body.insert("OverrideProtocol".into(), "tcp".into());
        if !mesh_gateway.is_empty() {
            body.insert(
                "OverrideMeshGateway".into(),
                serde_json::json!({ "Mode": mesh_gateway }),
            );
        }
        if *connect_timeout_ms > 0 {
            body.insert(
                "OverrideConnectTimeout".into(),
                format!("{connect_timeout_ms}ms").into(),
            );
        }
        Some(serde_json::Value::Object(body).to_string())
    }

    /// The answer in a reply (2xx, or 404 where it means "absent").
    fn parse(&self, reply: &Reply) -> Result<Answer, BodyError> {
        let body = reply.body.as_str();
        let absent = reply.status == 404;
        let json = |e: serde_json::Error| BodyError::Json(e.to_string());
        Ok(match self {
            Key::Service { .. } if absent => Answer::Service(None),
            Key::ProxyDefaults { .. } if absent => Answer::ProxyDefaults(None),
            Key::ServiceDefaults { .. } if absent => Answer::ServiceDefaults(None),
            // Community Edition has no such endpoint: one partition, no other to route to.
            Key::Partitions if absent => Answer::Names(Vec::new()),
            _ if absent => return Err(BodyError::NotFound(body.trim().to_owned())),
            Key::Service { .. } => {
                Answer::Service(Some(Box::new(serde_json::from_str(body).map_err(json)?)))
            }
            Key::Roots => Answer::Roots(serde_json::from_str(body).map_err(json)?),
            Key::Leaf { .. } => Answer::Leaf(serde_json::from_str(body).map_err(json)?),
            Key::AgentSelf | Key::Domain => {
                #[derive(Deserialize, Default)]
                #[serde(default)]
                struct SelfBody {
                    #[serde(rename = "Config", deserialize_with = "nullable")]
                    config: SelfConfig,
                    #[serde(rename = "DebugConfig", deserialize_with = "nullable")]
                    debug: SelfDebug,
                }
                #[derive(Deserialize, Default)]
                #[serde(default)]
                struct SelfDebug {
                    #[serde(rename = "DNSDomain", deserialize_with = "nullable")]
                    domain: String,
                }
                #[derive(Deserialize, Default)]
                #[serde(default)]
                struct SelfConfig {
                    #[serde(rename = "Datacenter")]
                    datacenter: String,
                }
                let b: SelfBody = serde_json::from_str(body).map_err(json)?;
                Answer::AgentSelf {
                    datacenter: b.config.datacenter,
                    domain: b.debug.domain,
                }
            }
            Key::Connect { .. } => Answer::Instances(instances(body, None).map_err(json)?.into()),
            Key::Gateways { .. } => Answer::Instances(
                instances(body, Some(KIND_MESH_GATEWAY))
                    .map_err(json)?
                    .into(),
            ),
            Key::ProxyDefaults { .. } => {
                Answer::ProxyDefaults(Some(serde_json::from_str(body).map_err(json)?))
            }
            Key::ServiceDefaults { .. } => {
                Answer::ServiceDefaults(Some(serde_json::from_str(body).map_err(json)?))
            }
            Key::Services { .. } => Answer::Names(catalog::service_names(body).map_err(json)?),
            Key::Datacenters => Answer::Names(catalog::datacenters(body).map_err(json)?),
            Key::Partitions => Answer::Names(catalog::partitions(body).map_err(json)?),
            Key::Servers => Answer::Instances(instances(body, None).map_err(json)?.into()),
            Key::FederationStates => {
                Answer::Federated(federation::mesh_gateways(body).map_err(json)?)
            }
            Key::Chain { .. } => {
                Answer::Chain(Box::new(discovery_chain::parse(body).map_err(json)?))
            }
            Key::GatewayNames { .. } => Answer::Names(catalog::gateway_names(body).map_err(json)?),
            Key::Resolvers { .. } => Answer::Resolvers(resolver::entries(body).map_err(json)?),
        })
    }

    /// Core keys must have a real answer before anything is served; for the others an
    /// error answer from the agent (a refusal) is enough to go on without them.
    pub fn is_core(&self) -> bool {
        matches!(
            self,
            Key::Service { .. } | Key::Roots | Key::Leaf { .. } | Key::AgentSelf
        )
    }
}

/// One change for the follower.
#[derive(Debug)]
pub struct Update {
    pub key: Key,
    pub result: Result<Answer, ApiError>,
}

/// How fast watches move; tests shorten the waits.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Blocking `wait` (capped at Consul's 10 minutes).
    pub wait: Duration,
    /// Back-off after errors: first delay and cap.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Rate limit per watch: one request per `every`, bursts of two.
    pub every: Duration,
    /// Asking again for a registration that does not exist yet.
    pub absent_every: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            wait: WAIT,
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            every: Duration::from_millis(200),
            absent_every: Duration::from_secs(2),
        }
    }
}

/// A running watch; dropping the handle (or `stop`) ends it at once, its request in flight
/// too: the key is no longer needed, and its blocking query would otherwise hold a thread
/// and an agent connection until its wait ends (up to 5 minutes).
pub struct Watch {
    stop: Arc<Stop>,
    /// The watch's own client (`None` for a fleet, which has its own).
    client: Option<Arc<Client>>,
    /// A gateway's catalog is followed by a fleet of threads rather than one.
    fleet: Option<super::fleet::Fleet>,
}

impl From<super::fleet::Fleet> for Watch {
    fn from(fleet: super::fleet::Fleet) -> Watch {
        Watch {
            stop: Arc::new(Stop::default()),
            client: None,
            fleet: Some(fleet),
        }
    }
}

impl Watch {
    pub fn stop(&self) {
        // Stop first: the thread, woken by the shutdown, then ends instead of retrying.
        self.stop.stop();
        if let Some(c) = &self.client {
            c.shutdown();
        }
        if let Some(f) = &self.fleet {
            f.stop();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Watch threads spend their life waiting on a socket; a small stack keeps a gateway with
/// hundreds of them cheap.
const STACK: usize = 256 << 10;

/// Starts following `key` with a client of its own made from `client` (the same agent and
/// settings), so that stopping the watch closes its connection.
pub fn spawn(
    key: Key,
    client: &Client,
    timing: Timing,
    tx: SyncSender<Update>,
) -> std::io::Result<Watch> {
    // A blocking query asks again as soon as it is answered: its connection is kept for
    // that. A poll asks again after minutes: it keeps none open in between.
    let idle = match key.style() {
        Style::Poll(_) => 0,
        Style::Hash | Style::Index => 1,
    };
    let own = client.own(idle);
    let stop = Arc::new(Stop::default());
    let (flag, c) = (stop.clone(), own.clone());
    std::thread::Builder::new()
        .name("sidegate-watch".into())
        .stack_size(STACK)
        .spawn(move || follow_key(&key, &c, timing, &tx, &flag))?;
    Ok(Watch {
        stop,
        client: Some(own),
        fleet: None,
    })
}

/// Polls (the datacenters, the partitions, the agent's own settings) ask one at a time: a
/// poll is a short request minutes apart, and letting them overlap with each other would add
/// a connection per polled key at the moment the blocking queries and the fleet's workers are
/// all busy, past the documented bound of 8 (2 fleet long-polls, 2 fleet workers, the
/// registration, the roots, the resolvers and this one).
static POLLING: Mutex<()> = Mutex::new(());

/// One request of a watch; `None` when the watch was stopped while its turn came (a poll
/// waits for the others' requests, never for their pauses).
fn ask(
    client: &Client,
    req: &Request,
    body: Option<&str>,
    style: Style,
    blocking: &Blocking,
    stop: &Stop,
) -> Option<Result<Reply, ApiError>> {
    // A poisoned lock only says another poll's thread panicked: the lock still orders.
    let _one_poll = matches!(style, Style::Poll(_)).then(|| {
        POLLING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    });
    if stop.is_stopped() {
        return None;
    }
    Some(match body {
        Some(b) => client.post_blocking(req, b, blocking),
        None => client.get(req, blocking),
    })
}

fn follow_key(key: &Key, client: &Client, timing: Timing, tx: &SyncSender<Update>, stop: &Stop) {
    let (req, style, body) = key.request();
    let method = if body.is_some() { "POST" } else { "GET" };
    let mut index = 0u64;
    let mut hash = String::new();
    let mut backoff = Backoff::new(timing.retry_min, timing.retry_max);
    let mut limit = RateLimit::new(timing.every, 2, Instant::now());
    let mut last: Option<Answer> = None;
    let mut failing = false;
    while !stop.wait(limit.take(Instant::now())) {
        let blocking = match style {
            Style::Hash => Blocking::Hash(hash.clone(), timing.wait),
            Style::Index => Blocking::Index(index, timing.wait),
            Style::Poll(_) => Blocking::No,
        };
        let Some(reply) = ask(client, &req, body.as_deref(), style, &blocking, stop) else {
            return;
        };
        let result = reply.and_then(|reply| {
            let answer = key
                .parse(&reply)
                .map_err(|e| ApiError::body(req.shown(method, &blocking), e))?;
            Ok((reply, answer))
        });
        if stop.is_stopped() {
            return;
        }
        let pause = match result {
            Ok((reply, answer)) => {
                backoff.reset();
                index = next_index(index, reply.index);
                hash = reply.hash.unwrap_or_default();
                let absent = matches!(answer, Answer::Service(None));
                // Same answer again (a blocking query timing out): nothing to tell, unless
                // the last thing told was an error.
                if failing || last.as_ref() != Some(&answer) {
                    failing = false;
                    last = Some(answer.clone());
                    if tx
                        .send(Update {
                            key: key.clone(),
                            result: Ok(answer),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                match style {
                    Style::Poll(every) => every,
                    _ if absent => timing.absent_every,
                    _ => Duration::ZERO,
                }
            }
            Err(e) => {
                failing = true;
                // After any failure ask from scratch: an agent that restarted with a fresh
                // state has lower indexes, and a query blocking on the old one would hang
                // for its whole wait instead of returning what changed.
                index = 0;
                hash.clear();
                if tx
                    .send(Update {
                        key: key.clone(),
                        result: Err(e),
                    })
                    .is_err()
                {
                    return;
                }
                backoff.next_delay(fastrand::f64())
            }
        };
        if stop.wait(pause) {
            return;
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::mpsc;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.into(),
            index: Some(1),
            hash: None,
        }
    }

    /// An "agent" that takes connections and never answers, as one holding a blocking
    /// query does; each accepted connection is handed over.
    pub(crate) fn silent_agent() -> (Arc<Client>, mpsc::Receiver<std::net::TcpStream>) {
        use crate::config::consul::settings::{resolve, FileKeys};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let settings = resolve(
            FileKeys {
                address: Some(listener.local_addr().unwrap().to_string()),
                gateway_service_id: Some("gw".into()),
                ..FileKeys::default()
            },
            &|_| None,
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if tx.send(s.unwrap()).is_err() {
                    return;
                }
            }
        });
        (Client::new(&settings), rx)
    }

    /// How long until the peer of `s` closes it (its read sees the end), up to `within`.
    pub(crate) fn closed_within(mut s: std::net::TcpStream, within: Duration) -> Option<Duration> {
        use std::io::Read;
        let started = Instant::now();
        s.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Some(started.elapsed())
                }
                Err(_) => return None,
            }
            if started.elapsed() > within {
                return None;
            }
        }
    }

    /// A watch no longer needed closes its connection at once, its request in flight
    /// included: it waited for its blocking query to end (up to 5 minutes), an agent
    /// connection held for nothing, while the client's other watches go on.
    #[test]
    fn a_stopped_watch_closes_its_connection_at_once() {
        let (client, accepted) = silent_agent();
        let (tx, _updates) = mpsc::sync_channel(4);
        let timing = Timing::default();
        let kept = spawn(Key::Roots, &client, timing, tx.clone()).unwrap();
        let kept_conn = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
        let dropped = spawn(Key::Roots, &client, timing, tx).unwrap();
        let conn = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(dropped);
        let took = closed_within(conn, Duration::from_secs(5));
        assert!(
            took.is_some(),
            "the stopped watch's request still holds its connection"
        );
        assert_eq!(
            closed_within(kept_conn, Duration::from_millis(300)),
            None,
            "the other watch's request was ended too"
        );
        drop(kept);
    }

    /// Polls take turns: a second poll waits for the first's request to end rather than
    /// opening a connection of its own next to it.
    #[test]
    fn polls_hold_one_agent_connection_between_them() {
        let (client, accepted) = silent_agent();
        let (tx, _updates) = mpsc::sync_channel(4);
        let timing = Timing::default();
        let first = spawn(Key::Datacenters, &client, timing, tx.clone()).unwrap();
        let first_conn = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
        let second = spawn(Key::Partitions, &client, timing, tx).unwrap();
        assert!(
            accepted.recv_timeout(Duration::from_millis(500)).is_err(),
            "a second poll opened a connection while the first's request was in flight"
        );
        drop(first);
        let second_conn = accepted.recv_timeout(Duration::from_secs(10));
        assert!(second_conn.is_ok(), "the second poll never asked");
        drop((first_conn, second));
    }

    #[test]
    fn requests_carry_enterprise_params_only_when_not_default() {
        let shown = |k: Key| k.http_request().shown("GET", &Blocking::No);
        let here = Place::new("dc1", "default");
        assert_eq!(
            shown(Key::Connect {
                service: "db".into(),
                namespace: "default".into(),
                place: here.clone()
            }),
            "GET /v1/health/connect/db?dc=dc1"
        );
        assert_eq!(
            shown(Key::Connect {
                service: "db".into(),
                namespace: "team".into(),
                place: Place::new("dc2", "finance")
            }),
            "GET /v1/health/connect/db?dc=dc2&ns=team&partition=finance"
        );
        assert_eq!(
            shown(Key::Gateways {
                place: Place::new("dc2", "default"),
                name: "mesh-gateway".into()
            }),
            "GET /v1/health/service/mesh-gateway?dc=dc2"
        );
        assert_eq!(
            shown(Key::Leaf {
                service: "web".into(),
                namespace: "default".into(),
                partition: "default".into()
            }),
            "GET /v1/agent/connect/ca/leaf/web"
        );
        assert_eq!(
            shown(Key::ProxyDefaults {
                partition: "finance".into()
            }),
            "GET /v1/config/proxy-defaults/global?partition=finance"
        );
        assert_eq!(
            shown(Key::Services { place: here }),
            "GET /v1/catalog/services?dc=dc1"
        );
    }

    #[test]
    fn absent_is_an_answer_only_where_consul_means_it() {
        let svc = Key::Service { id: "x".into() };
        assert_eq!(
            svc.parse(&reply(404, "unknown service ID: x")),
            Ok(Answer::Service(None))
        );
        let pd = Key::ProxyDefaults {
            partition: "default".into(),
        };
        assert_eq!(
            pd.parse(&reply(404, "Config entry not found")),
            Ok(Answer::ProxyDefaults(None))
        );
        assert!(Key::Roots.parse(&reply(404, "nope")).is_err());
        assert!(Key::Roots.parse(&reply(200, "[not json")).is_err());
        assert_eq!(
            Key::AgentSelf.parse(&reply(200, r#"{"Config":{"Datacenter":"dc7"}}"#)),
            Ok(Answer::AgentSelf {
                datacenter: "dc7".into(),
                domain: String::new(),
            })
        );
        assert_eq!(
            Key::Datacenters.parse(&reply(200, r#"["dc2","dc1"]"#)),
            Ok(Answer::Names(vec!["dc1".into(), "dc2".into()]))
        );
    }

    /// What Consul 1.8.7 answers (`/v1/agent/self` of `-domain=Example.`, the federation
    /// states of an agent with none yet, the `consul` service at the server RPC port).
    #[test]
    fn wan_federation_keys() {
        let shown = |k: Key| k.http_request().shown("GET", &Blocking::No);
        assert_eq!(
            shown(Key::FederationStates),
            "GET /v1/internal/federation-states/mesh-gateways"
        );
        assert_eq!(shown(Key::Servers), "GET /v1/health/service/consul");
        assert!(!Key::Domain.is_core());
        assert_eq!(
            Key::Domain.parse(&reply(
                200,
                r#"{"Config":{"Datacenter":"dc1","Version":"1.8.7"},"DebugConfig":{"DNSDomain":"Example."}}"#
            )),
            Ok(Answer::AgentSelf {
                datacenter: "dc1".into(),
                domain: "Example.".into(),
            })
        );
        assert_eq!(
            Key::FederationStates.parse(&reply(200, "{}")),
            Ok(Answer::Federated(BTreeMap::new()))
        );
        assert!(Key::FederationStates.parse(&reply(404, "")).is_err());
        let Ok(Answer::Instances(servers)) = Key::Servers.parse(&reply(
            200,
            r#"[{"Node":{"Node":"vm","Address":"127.0.0.1"},"Service":{"ID":"consul","Service":"consul","Address":"","Port":28596}}]"#,
        )) else {
            panic!("no instances")
        };
        assert_eq!(servers[0].lan.to_string(), "127.0.0.1:28596");
    }

    /// The chain is asked with POST, its overrides in the body, compiled as TCP; its answer
    /// is kept as saved state in the shape it was read.
    #[test]
    fn chain_key_posts_its_overrides() {
        let k = Key::Chain {
            service: "db".into(),
            namespace: "default".into(),
            place: Place::new("dc2", "default"),
            mesh_gateway: "local".into(),
            connect_timeout_ms: 7000,
        };
        let (req, style, body) = k.request();
        assert_eq!(style, Style::Index);
        assert_eq!(
            req.shown("POST", &Blocking::Index(9, WAIT)),
            "POST /v1/discovery-chain/db?compile-dc=dc2&index=9"
        );
        let body: serde_json::Value = serde_json::from_str(&body.unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"OverrideProtocol": "tcp", "OverrideMeshGateway": {"Mode": "local"}, "OverrideConnectTimeout": "7000ms"})
        );
        let plain = Key::Chain {
            service: "db".into(),
            namespace: "default".into(),
            place: Place::new("dc1", "default"),
            mesh_gateway: String::new(),
            connect_timeout_ms: 0,
        };
        assert_eq!(plain.body().unwrap(), r#"{"OverrideProtocol":"tcp"}"#);
        assert_eq!(Key::Roots.body(), None);
        let a = k
            .parse(&reply(
                200,
                &super::super::api::example("discovery-chain.json"),
            ))
            .unwrap();
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Answer>(&text).unwrap(), a);
        let text = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<Key>(&text).unwrap(), k);
        assert!(k.parse(&reply(404, "")).is_err());
        assert!(!k.is_core());
    }

    #[test]
    fn keys_and_answers_round_trip_as_state() {
        let k = Key::Connect {
            service: "db".into(),
            namespace: "default".into(),
            place: Place::new("dc2", "default"),
        };
        let text = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<Key>(&text).unwrap(), k);
        let a = Key::Gateways {
            place: Place::new("dc2", "default"),
            name: "mesh-gateway".into(),
        }
        .parse(&reply(
            200,
            &super::super::api::example("health-service-mesh-gateway.json"),
        ))
        .unwrap();
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Answer>(&text).unwrap(), a);
    }
}
