//! `POST /v1/discovery-chain/:service?compile-dc=` — an upstream's chain as Consul's own
//! compiler builds it (redirects, default subsets and failover already applied), read into
//! the same `Chain` value the file source compiles itself. Only the L4 part is read: the
//! start node's resolver, its target, then its failover targets in order.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{nullable, MeshGatewayConfig};
use crate::config::go_duration;
use crate::mesh::chain::filter::Filter;
use crate::mesh::chain::{Chain, Compiled, Subset, Target, UnsupportedFilter};
use crate::mesh::place::{DEFAULT_NAMESPACE, DEFAULT_PARTITION};

/// The chain as the agent answered it, kept as saved state in the shape it was read from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CompiledChain {
    pub service_name: String,
    pub namespace: String,
    pub datacenter: String,
    pub protocol: String,
    pub start_node: String,
    #[serde(deserialize_with = "nullable")]
    pub nodes: BTreeMap<String, Node>,
    #[serde(deserialize_with = "nullable")]
    pub targets: BTreeMap<String, ChainTarget>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "Type")]
    pub kind: String,
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub resolver: Option<ResolverNode>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ResolverNode {
    /// A Go duration (`5s`, `1m30s`).
    pub connect_timeout: String,
    pub target: String,
    #[serde(deserialize_with = "nullable")]
    pub failover: Option<FailoverNode>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct FailoverNode {
    #[serde(deserialize_with = "nullable")]
    pub targets: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ChainTarget {
    pub service: String,
    pub service_subset: String,
    pub namespace: String,
    /// Absent before Consul 1.11 (and in Community Edition it is always `default`).
    pub partition: String,
    pub datacenter: String,
    #[serde(deserialize_with = "nullable")]
    pub mesh_gateway: MeshGatewayConfig,
    #[serde(deserialize_with = "nullable")]
    pub subset: ChainSubset,
    #[serde(rename = "SNI")]
    pub sni: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ChainSubset {
    pub filter: String,
    pub only_passing: bool,
}

/// The body of the answer: `{"Chain": {...}}`.
#[derive(Deserialize)]
struct Body {
    #[serde(rename = "Chain")]
    chain: CompiledChain,
}

pub fn parse(body: &str) -> Result<CompiledChain, serde_json::Error> {
    Ok(serde_json::from_str::<Body>(body)?.chain)
}

/// Why an answer gives no L4 chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The chain starts at a router or splitter (L7 routing; sidegate carries TCP).
    NotResolver {
        node: String,
        kind: String,
    },
    /// A node or target the chain names is missing from the answer.
    Missing(String),
    Timeout(String),
    Mode {
        target: String,
        word: String,
    },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::NotResolver { node, kind } => write!(
                f,
                "the chain starts at {kind} node {node:?}: routers and splitters are L7, sidegate carries TCP"
            ),
            ChainError::Missing(what) => write!(f, "the chain names {what}, which it does not hold"),
            ChainError::Timeout(t) => write!(f, "connect timeout {t:?} is not a duration"),
            ChainError::Mode { target, word } => {
                write!(f, "target {target}: mesh gateway mode {word:?} is not none, local or remote")
            }
        }
    }
}

impl std::error::Error for ChainError {}

impl CompiledChain {
    /// The chain's targets in dial order, with what Consul resolved for each. A subset
    /// filter sidegate cannot evaluate is kept as an error on its target (which then
    /// selects nothing), not on the whole chain: the other targets still serve.
    pub fn to_chain(&self) -> Result<Chain, ChainError> {
        let start = self
            .nodes
            .get(&self.start_node)
            .ok_or_else(|| ChainError::Missing(format!("start node {:?}", self.start_node)))?;
        let resolver = match (&start.resolver, start.kind.as_str()) {
            (Some(r), "resolver") => r,
            _ => {
                return Err(ChainError::NotResolver {
                    node: self.start_node.clone(),
                    kind: start.kind.clone(),
                })
            }
        };
        let connect_timeout = go_duration(&resolver.connect_timeout)
            .ok_or_else(|| ChainError::Timeout(resolver.connect_timeout.clone()))?;
        let failover = resolver.failover.iter().flat_map(|f| &f.targets);
        let mut targets = Vec::new();
        let mut compiled = Vec::new();
        for id in std::iter::once(&resolver.target).chain(failover) {
            let t = self
                .targets
                .get(id)
                .ok_or_else(|| ChainError::Missing(format!("target {id:?}")))?;
            let or_default = |v: &str, d: &str| {
                if v.is_empty() {
                    d.to_owned()
                } else {
                    v.to_owned()
                }
            };
            targets.push(Target {
                service: t.service.clone(),
                subset: t.service_subset.clone(),
                namespace: or_default(&t.namespace, DEFAULT_NAMESPACE),
                partition: or_default(&t.partition, DEFAULT_PARTITION),
                datacenter: t.datacenter.clone(),
            });
            let mesh_gateway = t.mesh_gateway.parsed().map_err(|e| ChainError::Mode {
                target: id.clone(),
                word: e.0,
            })?;
            compiled.push(Compiled {
                subset: (!t.service_subset.is_empty()).then(|| t.subset.to_subset()),
                mesh_gateway,
                sni: t.sni.clone(),
            });
        }
        Ok(Chain {
            targets,
            connect_timeout,
            compiled,
        })
    }
}

impl ChainSubset {
    /// The subset in sidegate's terms; an expression outside the supported language is an
    /// error naming it, never a filter that selects everything.
    fn to_subset(&self) -> Result<Subset, UnsupportedFilter> {
        let filter = match self.filter.trim() {
            "" => None,
            text => Some(Filter::parse(text).map_err(|error| UnsupportedFilter {
                text: text.to_owned(),
                error,
            })?),
        };
        Ok(Subset {
            filter,
            only_passing: self.only_passing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::mode::Mode;
    use std::time::Duration;

    #[test]
    fn reads_go_durations() {
        let d = |s: &str| go_duration(s);
        assert_eq!(d("5s"), Some(Duration::from_secs(5)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("0s"), Some(Duration::ZERO));
        assert_eq!(d(""), None);
        assert_eq!(d("5"), None);
        assert_eq!(d("5x"), None);
    }

    /// The reference example (a newer Consul: `Partition` present, timeouts on targets too).
    #[test]
    fn reads_the_example_chain() {
        let c = parse(&super::super::example("discovery-chain.json")).unwrap();
        let chain = c.to_chain().unwrap();
        assert_eq!(chain.connect_timeout, Duration::from_secs(5));
        assert_eq!(chain.targets.len(), 1);
        assert_eq!(chain.targets[0].to_string(), "api.default.default.dc2");
        assert_eq!(chain.compiled[0].mesh_gateway, Some(Mode::Remote));
        assert_eq!(chain.compiled[0].subset, None);
        assert!(chain.compiled[0]
            .sni
            .starts_with("api.default.dc2.internal."));
    }

    /// What Consul 1.8.7 answers for a resolver with a default subset and failover to two
    /// datacenters (no `Partition`; the same-datacenter target's mode left empty).
    const CONSUL_1_8: &str = r#"{"Chain":{"ServiceName":"db","Namespace":"default","Datacenter":"dc1","Protocol":"tcp","StartNode":"resolver:v1.db.default.dc1","Nodes":{"resolver:v1.db.default.dc1":{"Type":"resolver","Name":"v1.db.default.dc1","Resolver":{"ConnectTimeout":"3s","Target":"v1.db.default.dc1","Failover":{"Targets":["v1.db.default.dc2","v1.db.default.dc3"]}}}},"Targets":{"v1.db.default.dc1":{"ID":"v1.db.default.dc1","Service":"db","ServiceSubset":"v1","Namespace":"default","Datacenter":"dc1","MeshGateway":{},"Subset":{"Filter":"Service.Meta.version == v1","OnlyPassing":true},"SNI":"v1.db.default.dc1.internal.x.consul"},"v1.db.default.dc2":{"ID":"v1.db.default.dc2","Service":"db","ServiceSubset":"v1","Namespace":"default","Datacenter":"dc2","MeshGateway":{"Mode":"remote"},"Subset":{"Filter":"Service.Meta.version matches \"v.*\"","OnlyPassing":true},"SNI":"v1.db.default.dc2.internal.x.consul"},"v1.db.default.dc3":{"ID":"v1.db.default.dc3","Service":"db","ServiceSubset":"v1","Namespace":"default","Datacenter":"dc3","MeshGateway":{"Mode":"local"},"Subset":{"Filter":"","OnlyPassing":false},"SNI":"v1.db.default.dc3.internal.x.consul"}}}}"#;

    #[test]
    fn reads_targets_in_failover_order_with_their_subsets() {
        let chain = parse(CONSUL_1_8).unwrap().to_chain().unwrap();
        let ids: Vec<String> = chain.targets.iter().map(ToString::to_string).collect();
        assert_eq!(
            ids,
            [
                "v1.db.default.default.dc1",
                "v1.db.default.default.dc2",
                "v1.db.default.default.dc3"
            ]
        );
        assert_eq!(chain.connect_timeout, Duration::from_secs(3));
        let modes: Vec<_> = chain.compiled.iter().map(|c| c.mesh_gateway).collect();
        assert_eq!(modes, [None, Some(Mode::Remote), Some(Mode::Local)]);
        let Some(Ok(first)) = &chain.compiled[0].subset else {
            panic!("{:?}", chain.compiled[0])
        };
        assert!(first.only_passing);
        assert_eq!(
            first.filter.as_ref().map(Filter::text),
            Some("Service.Meta.version == v1")
        );
        // `matches` is outside the supported language: an error on that target alone.
        let Some(Err(why)) = &chain.compiled[1].subset else {
            panic!("{:?}", chain.compiled[1])
        };
        assert!(why.to_string().contains("matches"), "{why}");
        assert_eq!(
            chain.compiled[2].subset,
            Some(Ok(Subset {
                filter: None,
                only_passing: false
            }))
        );
    }

    #[test]
    fn an_l7_start_or_a_dangling_name_is_refused() {
        let mut c = parse(CONSUL_1_8).unwrap();
        c.targets.remove("v1.db.default.dc3");
        assert!(matches!(c.to_chain(), Err(ChainError::Missing(_))));
        let router = r#"{"Chain":{"StartNode":"router:web","Nodes":{"router:web":{"Type":"router","Name":"web"}}}}"#;
        let e = parse(router).unwrap().to_chain().unwrap_err();
        assert!(e.to_string().contains("L7"), "{e}");
        assert!(parse("{}").is_err());
    }
}
