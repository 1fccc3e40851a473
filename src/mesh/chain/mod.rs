//! The discovery chain at L4: what a `service-resolver` does to an upstream's traffic.
//!
//! `compile` turns an upstream into an ordered list of targets — the resolved primary
//! (redirects followed, `default_subset` applied), then its failover targets — with Consul's
//! discovery-chain semantics (agent/consul/discoverychain/compile.go). The file source
//! compiles it here; a chain compiled by Consul is the same `Chain` value, so the plan, the
//! sidecar's dialer and `check --json` never know which compiler made it.

pub mod filter;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use self::filter::Filter;
use super::config_entries::target_key;
use super::mode::Mode;
use super::snapshot::{Health, Instance};

/// Consul's connect timeout when the resolver sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One `service-resolver` entry (Consul's keys, snake_case).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Resolver {
    pub name: String,
    pub namespace: String,
    pub partition: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub default_subset: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subsets: BTreeMap<String, Subset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<TargetOpts>,
    /// Keyed by subset name or `*`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub failover: BTreeMap<String, Failover>,
    #[serde(skip)]
    pub connect_timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Subset {
    /// `None`: every instance (an empty filter, as in Consul).
    pub filter: Option<Filter>,
    pub only_passing: bool,
}

impl Subset {
    /// Whether `instance` of `service` belongs to this subset and may be dialled.
    pub fn admits(&self, service: &str, instance: &Instance) -> bool {
        usable(instance, self.only_passing)
            && self
                .filter
                .as_ref()
                .is_none_or(|f| f.matches(&instance.fields(service)))
    }
}

/// Critical instances are never dialled; `only_passing` drops warning ones too.
pub fn usable(instance: &Instance, only_passing: bool) -> bool {
    match instance.health {
        Health::Passing => true,
        Health::Warning => !only_passing,
        Health::Critical => false,
    }
}

/// Where a redirect or a failover entry points; an empty field keeps the current target's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TargetOpts {
    pub service: String,
    pub service_subset: String,
    pub namespace: String,
    pub partition: String,
    pub datacenter: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Failover {
    /// `service`, `service_subset`, `namespace` of the entry itself.
    #[serde(flatten)]
    pub opts: TargetOpts,
    pub datacenters: Vec<String>,
    pub targets: Vec<TargetOpts>,
}

/// One place traffic can go: a service (and subset) in a namespace, partition, datacenter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub service: String,
    pub subset: String,
    pub namespace: String,
    pub partition: String,
    pub datacenter: String,
}

impl fmt::Display for Target {
    /// Consul's target ID: `[subset.]service.namespace.partition.datacenter`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.subset.is_empty() {
            write!(f, "{}.", self.subset)?;
        }
        write!(
            f,
            "{}.{}.{}.{}",
            self.service, self.namespace, self.partition, self.datacenter
        )
    }
}

impl Target {
    /// Consul's `rewriteTarget`: another service drops the subset unless one is given;
    /// every other field given replaces the current one.
    fn rewrite(&self, opts: &TargetOpts) -> Target {
        let mut t = self.clone();
        if !opts.service.is_empty() && !opts.service.eq_ignore_ascii_case(&t.service) {
            t.service.clone_from(&opts.service);
            t.subset.clear();
        }
        let set = |field: &mut String, value: &String| {
            if !value.is_empty() {
                field.clone_from(value);
            }
        };
        set(&mut t.subset, &opts.service_subset);
        set(&mut t.partition, &opts.partition);
        set(&mut t.namespace, &opts.namespace);
        set(&mut t.datacenter, &opts.datacenter);
        t
    }

    fn same(&self, other: &Target) -> bool {
        self.service.eq_ignore_ascii_case(&other.service)
            && self.subset == other.subset
            && self.namespace.eq_ignore_ascii_case(&other.namespace)
            && self.partition.eq_ignore_ascii_case(&other.partition)
            && self.datacenter.eq_ignore_ascii_case(&other.datacenter)
    }
}

/// An upstream's compiled chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// In dial order: the primary, then failover targets.
    pub targets: Vec<Target>,
    pub connect_timeout: Duration,
    /// A chain compiled by Consul: per target, in `targets` order, what Consul resolved for
    /// it. Empty for a chain compiled here, whose plan reads the snapshot's resolvers and
    /// config entries instead (with the Consul source the snapshot holds no resolvers).
    pub compiled: Vec<Compiled>,
}

/// What Consul's compiler says of one target beyond its names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// The subset's definition; `None` for a target without a subset. `Err`: a filter
    /// sidegate cannot evaluate (the reason) — the target then selects no instance, never
    /// every instance.
    pub subset: Option<Result<Subset, UnsupportedFilter>>,
    /// Consul's `MeshGateway.Mode` for the target; Consul leaves it empty for a target in
    /// the datacenter the chain is used in.
    pub mesh_gateway: Option<Mode>,
    /// The target's SNI as Consul names it.
    pub sni: String,
}

/// A subset filter from Consul that sidegate's filter language cannot evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedFilter {
    pub text: String,
    pub error: filter::FilterError,
}

impl fmt::Display for UnsupportedFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "filter {:?}: {}", self.text, self.error)
    }
}

/// Why a chain cannot be compiled (Consul refuses these entries the same way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainError {
    RedirectLoop(Vec<String>),
    NoSuchSubset { service: String, subset: String },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::RedirectLoop(order) => {
                write!(f, "circular resolver redirect: {}", order.join(" -> "))
            }
            ChainError::NoSuchSubset { service, subset } => write!(
                f,
                "service {service:?} has no subset named {subset:?} (define it in its service_resolvers entry)"
            ),
        }
    }
}

/// The resolvers of a snapshot, by `target_key` of their name, namespace and partition.
pub type Resolvers = BTreeMap<String, Resolver>;

/// The resolver of `t`'s service, if one is configured.
pub fn resolver_of<'a>(resolvers: &'a Resolvers, t: &Target) -> Option<&'a Resolver> {
    if resolvers.is_empty() {
        return None;
    }
    resolvers.get(&target_key(&t.service, &t.namespace, &t.partition))
}

/// Follows redirects and the default subset from `start` to the target traffic goes to.
fn resolve(
    resolvers: &Resolvers,
    start: Target,
) -> Result<(Target, Option<&Resolver>), ChainError> {
    let mut target = start;
    let mut history: Vec<Target> = Vec::new();
    loop {
        if history.iter().any(|h| h.same(&target)) {
            let mut order: Vec<String> = history.iter().map(ToString::to_string).collect();
            order.push(target.to_string());
            return Err(ChainError::RedirectLoop(order));
        }
        history.push(target.clone());
        let resolver = resolver_of(resolvers, &target);
        if let Some(redirect) = resolver.and_then(|r| r.redirect.as_ref()) {
            let next = target.rewrite(redirect);
            if !next.same(&target) {
                target = next;
                continue;
            }
        }
        if let Some(r) = resolver {
            if target.subset.is_empty() && !r.default_subset.is_empty() {
                target.subset.clone_from(&r.default_subset);
                continue;
            }
        }
        if !target.subset.is_empty()
            && !resolver.is_some_and(|r| r.subsets.contains_key(&target.subset))
        {
            return Err(ChainError::NoSuchSubset {
                service: target.service,
                subset: target.subset,
            });
        }
        return Ok((target, resolver));
    }
}

/// Compiles the chain of an upstream to `start` (its subset empty). `override_timeout` is
/// the upstream's own `connect_timeout_ms`, which wins over the resolver's as in Consul.
pub fn compile(
    resolvers: &Resolvers,
    start: Target,
    override_timeout: Option<Duration>,
) -> Result<Chain, ChainError> {
    let (primary, resolver) = resolve(resolvers, start)?;
    let connect_timeout = override_timeout
        .or(resolver.and_then(|r| r.connect_timeout))
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let failover = resolver.and_then(|r| {
        r.failover
            .get(&primary.subset)
            .or_else(|| r.failover.get("*"))
    });
    let mut targets = vec![primary.clone()];
    if let Some(f) = failover {
        let rewritten: Vec<Target> = if !f.datacenters.is_empty() {
            f.datacenters
                .iter()
                .map(|dc| {
                    primary.rewrite(&TargetOpts {
                        datacenter: dc.clone(),
                        ..f.opts.clone()
                    })
                })
                .collect()
        } else if !f.targets.is_empty() {
            f.targets.iter().map(|t| primary.rewrite(t)).collect()
        } else {
            vec![primary.rewrite(&f.opts)]
        };
        for t in rewritten {
            // Never fail over to the primary itself; each failover target's own resolver
            // applies (redirect, default subset) but not its failover.
            if t.same(&primary) {
                continue;
            }
            targets.push(resolve(resolvers, t)?.0);
        }
    }
    Ok(Chain {
        targets,
        connect_timeout,
        compiled: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
