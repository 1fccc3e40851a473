//! Intentions: which callers may connect to this sidecar's service, decided in one place.
//!
//! A verified inbound caller (its certificate's SPIFFE ID) is first checked to be a service
//! of this mesh's trust domain — nothing else can be the subject of an intention — and then
//! decided by one of two authorities:
//!
//! - the file's `[sidecar.intentions]` ([`Intentions`]): exact rule, then `*`, then default;
//! - the Consul agent ([`Authority`], implemented by `consul::authorizer`, which only carries
//!   questions and answers): asked off the event loop, a few at a time, its recent answers
//!   used without asking, and when it cannot answer, the rules of [`without_agent`].

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use smol::lock::Semaphore;

use crate::names::SpiffeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
}

/// An answer: allow or deny, and why (for the log line of the connection).
pub type Verdict = (Action, String);

/// File-source authorization of inbound callers (`[sidecar.intentions]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Intentions {
    pub default: Action,
    pub rules: Vec<IntentionRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IntentionRule {
    pub source: String,
    pub source_namespace: String,
    pub source_partition: String,
    pub action: Action,
}

/// An authority outside the process (the Consul agent's intentions).
pub trait Authority: Send + Sync {
    /// A recent answer for this caller (its SPIFFE ID), without any I/O.
    fn cached(&self, caller: &str) -> Option<Verdict>;
    /// Asks, blocking; runs on a blocking thread, never on the event loop. `serial` is the
    /// caller certificate's serial number, which the authority may want to see.
    fn ask(&self, caller: &str, serial: &str) -> Verdict;
    /// What it is, for plans and logs, e.g. `consul agent http://127.0.0.1:8500 for web`.
    fn describe(&self) -> String;
}

/// An authority in a snapshot: compared and shown by what it is, so two snapshots with the
/// same authority are equal.
#[derive(Clone)]
pub struct SharedAuthority(pub Arc<dyn Authority>);

/// Requests to an authority in flight at once: a burst of new callers cannot start a burst
/// of threads.
static ASKING: Semaphore = Semaphore::new(4);

/// Whether `caller` may connect. `serial` is asked for only when the authority is asked.
pub async fn authorize(
    intentions: &Intentions,
    authority: Option<&SharedAuthority>,
    trust_domain: &str,
    caller: &SpiffeId,
    serial: impl FnOnce() -> String,
) -> Verdict {
    let service = match of_this_mesh(caller, trust_domain) {
        Ok(service) => service,
        Err(denied) => return denied,
    };
    let Some(authority) = authority else {
        return intentions.decide(&service);
    };
    let uri = caller.to_string();
    if let Some(v) = authority.0.cached(&uri) {
        return v;
    }
    let _permit = ASKING.acquire().await;
    // Whoever queued behind the caller that asked finds its answer here.
    if let Some(v) = authority.0.cached(&uri) {
        return v;
    }
    let serial = serial();
    let authority = authority.0.clone();
    smol::unblock(move || authority.ask(&uri, &serial)).await
}

/// The caller's service, namespace and partition, when it is a service of this trust domain:
/// the one check every authority relies on.
pub struct Caller<'a> {
    pub service: &'a str,
    pub namespace: &'a str,
    pub partition: &'a str,
}

fn of_this_mesh<'a>(caller: &'a SpiffeId, trust_domain: &str) -> Result<Caller<'a>, Verdict> {
    let SpiffeId::Service {
        trust_domain: td,
        partition,
        namespace,
        service,
        ..
    } = caller
    else {
        return Err((Action::Deny, format!("{caller} is not a service identity")));
    };
    if !td.eq_ignore_ascii_case(trust_domain) {
        return Err((
            Action::Deny,
            format!("{caller} is from trust domain {td}, not {trust_domain}"),
        ));
    }
    Ok(Caller {
        service,
        namespace,
        partition,
    })
}

impl Intentions {
    /// Whether `caller` may connect, and why. Callers from another trust domain are not of
    /// this mesh and are denied.
    pub fn authorize(&self, caller: &SpiffeId, trust_domain: &str) -> Verdict {
        match of_this_mesh(caller, trust_domain) {
            Ok(c) => self.decide(&c),
            Err(denied) => denied,
        }
    }

    /// A rule naming the caller's service beats a `*` rule (Consul's precedence: exact before
    /// wildcard); no rule → `default`.
    fn decide(&self, c: &Caller<'_>) -> Verdict {
        let same_place = |r: &&IntentionRule| {
            r.source_namespace == c.namespace && r.source_partition == c.partition
        };
        let exact = self
            .rules
            .iter()
            .filter(same_place)
            .find(|r| r.source == c.service);
        let wildcard = || {
            self.rules
                .iter()
                .filter(same_place)
                .find(|r| r.source == "*")
        };
        match exact.or_else(wildcard) {
            Some(rule) => (
                rule.action,
                format!("intention {} => {:?}", rule.source, rule.action),
            ),
            None => (self.default, format!("default {:?}", self.default)),
        }
    }
}

/// The agent's answer as a verdict; `from` says where it came from (for the log line).
pub fn agent_verdict(authorized: bool, reason: &str, from: &str) -> Verdict {
    let action = if authorized {
        Action::Allow
    } else {
        Action::Deny
    };
    (action, format!("{from}: {reason}"))
}

/// Why the agent gave no decision.
pub enum NoAnswer<'a> {
    /// It refused to be asked (4xx: the token may not ask).
    Refused(&'a dyn fmt::Display),
    /// Unreachable or failing (5xx).
    Unreachable,
}

/// The last answer the agent gave for a caller: allowed, its reason, and its age in seconds.
pub type LastAnswer<'a> = (bool, &'a str, u64);

/// No decision from the agent. A refusal denies and says why. Unreachable: the last answer
/// for this caller, however old — callers allowed before keep working while the agent is
/// down, and callers denied before stay denied — else deny.
pub fn without_agent(why: NoAnswer<'_>, last: Option<LastAnswer<'_>>, caller: &str) -> Verdict {
    match (why, last) {
        (NoAnswer::Refused(error), _) => (
            Action::Deny,
            format!("the agent refused to authorize: {error}"),
        ),
        (NoAnswer::Unreachable, Some((authorized, reason, age))) => agent_verdict(
            authorized,
            reason,
            &format!("agent unreachable; its answer from {age} s ago"),
        ),
        (NoAnswer::Unreachable, None) => (
            Action::Deny,
            format!("agent unreachable and no earlier answer for {caller}"),
        ),
    }
}

impl PartialEq for SharedAuthority {
    fn eq(&self, other: &Self) -> bool {
        self.0.describe() == other.0.describe()
    }
}

impl Eq for SharedAuthority {}

impl fmt::Debug for SharedAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authority({})", self.0.describe())
    }
}

impl serde::Serialize for SharedAuthority {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "td.consul";

    fn rule(source: &str, action: Action) -> IntentionRule {
        IntentionRule {
            source: source.into(),
            source_namespace: "default".into(),
            source_partition: "default".into(),
            action,
        }
    }

    #[test]
    fn exact_beats_wildcard_beats_default() {
        let svc = |name: &str| SpiffeId::service(TD, "default", "default", "dc1", name);
        let intentions = Intentions {
            default: Action::Deny,
            rules: vec![rule("*", Action::Allow), rule("api", Action::Deny)],
        };
        let cases = [
            (svc("web"), Action::Allow),
            (svc("api"), Action::Deny),
            (
                SpiffeId::service(TD, "part2", "default", "dc1", "web"),
                Action::Deny,
            ),
            (
                SpiffeId::service("other.consul", "default", "default", "dc1", "web"),
                Action::Deny,
            ),
        ];
        for (caller, want) in cases {
            assert_eq!(intentions.authorize(&caller, TD).0, want, "{caller}");
        }
        let open = Intentions {
            default: Action::Allow,
            rules: vec![],
        };
        assert_eq!(open.authorize(&svc("anyone"), TD).0, Action::Allow);
        assert_eq!(
            open.authorize(&SpiffeId::signing_for_cluster("td"), TD).0,
            Action::Deny
        );
    }

    /// An authority that allows everyone and counts how often it was asked.
    struct Everyone(std::sync::atomic::AtomicUsize);

    impl Authority for Everyone {
        fn cached(&self, _: &str) -> Option<Verdict> {
            None
        }
        fn ask(&self, _: &str, _: &str) -> Verdict {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (Action::Allow, "asked".into())
        }
        fn describe(&self) -> String {
            "everyone".into()
        }
    }

    /// The trust-domain check comes before any authority: a caller of another mesh is never
    /// asked about, even when the authority would allow it.
    #[test]
    fn another_trust_domain_is_denied_before_the_authority_is_asked() {
        let everyone = Arc::new(Everyone(Default::default()));
        let authority = SharedAuthority(everyone.clone());
        let closed = Intentions {
            default: Action::Deny,
            rules: vec![],
        };
        let decide = |caller: &SpiffeId| {
            smol::block_on(authorize(
                &closed,
                Some(&authority),
                TD,
                caller,
                String::new,
            ))
        };
        let stranger = SpiffeId::service("other.consul", "default", "default", "dc1", "web");
        assert_eq!(decide(&stranger).0, Action::Deny);
        assert_eq!(decide(&SpiffeId::signing_for_cluster("td")).0, Action::Deny);
        assert_eq!(everyone.0.load(std::sync::atomic::Ordering::Relaxed), 0);
        let web = SpiffeId::service(TD, "default", "default", "dc1", "web");
        assert_eq!(decide(&web), (Action::Allow, "asked".into()));
        assert_eq!(everyone.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn without_the_agent_the_last_answer_stands() {
        let refused: &dyn fmt::Display = &"403 Permission denied";
        let v = without_agent(NoAnswer::Refused(refused), Some((true, "ok", 1)), "c");
        assert_eq!(
            v.0,
            Action::Deny,
            "a refusal denies whatever was said before"
        );
        let v = without_agent(NoAnswer::Unreachable, Some((true, "ok", 5)), "c");
        assert_eq!(
            v,
            (
                Action::Allow,
                "agent unreachable; its answer from 5 s ago: ok".into()
            )
        );
        let v = without_agent(NoAnswer::Unreachable, Some((false, "no", 5)), "c");
        assert_eq!(v.0, Action::Deny);
        let v = without_agent(NoAnswer::Unreachable, None, "c");
        assert_eq!(
            v,
            (
                Action::Deny,
                "agent unreachable and no earlier answer for c".into()
            )
        );
    }
}
