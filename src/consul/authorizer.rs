//! The agent as an intentions authority (`/v1/agent/connect/authorize`): it carries the
//! questions and keeps the answers; what they decide is `mesh::intentions`'. Answers are
//! cached briefly so a burst of connections from one caller costs one request, and the last
//! answer per caller is kept (also on disk) for when the agent cannot be asked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::api::authorize::{AuthorizeRequest, AuthorizeResponse};
use super::client::{Blocking, Client, Request};
use super::errors::ApiError;
use super::state_dir;
use super::status::{now_unix, Status};
use crate::mesh::intentions::{
    agent_verdict, without_agent, Authority, NoAnswer, SharedAuthority, Verdict,
};

/// How long an answer is used without asking again: an intention changed to deny refuses new
/// connections within this time.
pub const FRESH: Duration = Duration::from_secs(3);
/// Callers remembered; beyond this the oldest answer is forgotten.
pub const MAX_ENTRIES: usize = 1024;
const FILE: &str = "consul-authorizations.json";
/// At most one "agent unreachable" warning per this long.
const WARN_EVERY: u64 = 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    target: String,
    caller: String,
    authorized: bool,
    reason: String,
    /// When the agent said it (seconds since 1970).
    at_unix: u64,
    /// When this run last heard it; `None` for answers restored from disk.
    #[serde(skip)]
    heard: Option<Instant>,
}

/// One per follower: the agent client, the cache, and where answers are saved.
pub struct Authorizer {
    client: Arc<Client>,
    status: Arc<Status>,
    cache: Mutex<HashMap<(String, String), Remembered>>,
    /// Held while the answers are written to `state_dir`.
    writing: Mutex<()>,
    state_dir: Option<PathBuf>,
    last_warning: AtomicU64,
}

impl Authorizer {
    pub fn new(
        client: Arc<Client>,
        status: Arc<Status>,
        state_dir: Option<PathBuf>,
    ) -> Arc<Authorizer> {
        let mut cache = HashMap::new();
        if let Some(dir) = &state_dir {
            match state_dir::read(dir, FILE)
                .map(|bytes| serde_json::from_slice::<Vec<Remembered>>(&bytes))
            {
                Ok(Ok(list)) => {
                    for r in list.into_iter().take(MAX_ENTRIES) {
                        cache.insert((r.target.clone(), r.caller.clone()), r);
                    }
                }
                Ok(Err(e)) => crate::warn!(
                    "consul: saved authorizations in {} unreadable ({e}); ignored",
                    dir.display()
                ),
                Err(state_dir::ReadError::Missing) => {}
                Err(e) => crate::warn!("consul: saved authorizations in {}: {e}", dir.display()),
            }
        }
        Arc::new(Authorizer {
            client,
            status,
            cache: Mutex::new(cache),
            writing: Mutex::new(()),
            state_dir,
            last_warning: AtomicU64::new(0),
        })
    }

    /// The authority for one target service, to put in a snapshot.
    pub fn for_service(self: &Arc<Self>, target: &str) -> SharedAuthority {
        SharedAuthority(Arc::new(ForService {
            core: self.clone(),
            target: target.to_owned(),
        }))
    }

    fn lookup(&self, target: &str, caller: &str, fresh_only: bool) -> Option<Remembered> {
        let cache = self.cache.lock().ok()?;
        let r = cache.get(&(target.to_owned(), caller.to_owned()))?;
        let fresh = r.heard.is_some_and(|h| h.elapsed() < FRESH);
        (fresh || !fresh_only).then(|| r.clone())
    }

    fn remember(&self, r: Remembered) {
        let changed = self.insert(r);
        if changed {
            self.save();
        }
    }

    /// Into the cache; true when the answer for that caller changed.
    fn insert(&self, r: Remembered) -> bool {
        let Ok(mut cache) = self.cache.lock() else {
            return false;
        };
        let key = (r.target.clone(), r.caller.clone());
        let changed = cache
            .get(&key)
            .is_none_or(|old| old.authorized != r.authorized || old.reason != r.reason);
        if !cache.contains_key(&key) && cache.len() >= MAX_ENTRIES {
            let oldest = cache
                .iter()
                .min_by_key(|(_, v)| (v.heard.is_some(), v.heard, v.at_unix))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                cache.remove(&k);
            }
        }
        cache.insert(key, r);
        changed
    }

    /// Writes the answers out. The cache is locked only to copy it — the event loop reads
    /// it for every caller, and an fsync on an SD card can take long — while writers take
    /// turns, each writing the cache as it is when its turn comes, so the last write holds
    /// the latest answers.
    fn save(&self) {
        let Some(dir) = &self.state_dir else {
            return;
        };
        let Ok(_turn) = self.writing.lock() else {
            return;
        };
        let mut list: Vec<Remembered> = match self.cache.lock() {
            Ok(cache) => cache.values().cloned().collect(),
            Err(_) => return,
        };
        list.sort_by(|a, b| (&a.target, &a.caller).cmp(&(&b.target, &b.caller)));
        state_dir::save_json(dir, FILE, &list, &self.status, "authorizations");
    }

    fn ask(&self, target: &str, caller: &str, serial: &str) -> Verdict {
        let body = AuthorizeRequest {
            target: target.to_owned(),
            client_cert_uri: caller.to_owned(),
            client_cert_serial: serial.to_owned(),
        };
        let req = Request::new("/v1/agent/connect/authorize".into());
        let shown = || req.shown("POST", &Blocking::No);
        let outcome = serde_json::to_string(&body)
            .map_err(|e| ApiError::body(shown(), e))
            .and_then(|json| self.client.post(&req, &json))
            .and_then(|reply| {
                if reply.status != 200 {
                    return Err(ApiError::status_error(shown(), reply.status, &reply.body));
                }
                serde_json::from_str::<AuthorizeResponse>(&reply.body)
                    .map_err(|e| ApiError::body(shown(), e))
            });
        match outcome {
            Ok(resp) => {
                let r = Remembered {
                    target: target.to_owned(),
                    caller: caller.to_owned(),
                    authorized: resp.authorized,
                    reason: resp.reason,
                    at_unix: now_unix(),
                    heard: Some(Instant::now()),
                };
                let v = verdict(&r, "agent");
                self.remember(r);
                v
            }
            Err(e) => self.without_agent(target, caller, &e),
        }
    }

    /// No decision from the agent: counted, warned about now and then, and decided by
    /// `without_agent` from what the agent said before.
    fn without_agent(&self, target: &str, caller: &str, error: &ApiError) -> Verdict {
        self.status.authorize_error();
        self.status.watch_error(error.to_string());
        let now = now_unix();
        if self.last_warning.load(Ordering::Relaxed) + WARN_EVERY <= now {
            self.last_warning.store(now, Ordering::Relaxed);
            crate::warn!("consul: cannot authorize inbound callers: {error}");
        }
        let why = if error.is_refusal() {
            NoAnswer::Refused(error)
        } else {
            NoAnswer::Unreachable
        };
        let last = self.lookup(target, caller, false);
        let last = last.as_ref().map(|r| {
            (
                r.authorized,
                r.reason.as_str(),
                now.saturating_sub(r.at_unix),
            )
        });
        without_agent(why, last, caller)
    }
}

fn verdict(r: &Remembered, from: &str) -> Verdict {
    agent_verdict(r.authorized, &r.reason, from)
}

/// The authority of one sidecar's service.
struct ForService {
    core: Arc<Authorizer>,
    target: String,
}

impl Authority for ForService {
    fn cached(&self, caller: &str) -> Option<Verdict> {
        self.core
            .lookup(&self.target, caller, true)
            .map(|r| verdict(&r, "agent (cached)"))
    }

    fn ask(&self, caller: &str, serial: &str) -> Verdict {
        self.core.ask(&self.target, caller, serial)
    }

    fn describe(&self) -> String {
        format!(
            "consul agent {} for {}",
            self.core.client.address(),
            self.target
        )
    }
}
