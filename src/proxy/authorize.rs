//! Authorizing a verified inbound caller: by the plan's file intentions, or by its authority
//! (the Consul agent). Asking the agent is blocking I/O, so it runs on the blocking thread
//! pool, a few at a time: the event loop never waits on the network, and a burst of new
//! callers cannot start a burst of threads. Waiting callers re-check the cache first, so one
//! answer serves everyone who queued behind it.

use rustls::ServerConnection;
use smol::lock::Semaphore;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::mesh::authority::Verdict;
use crate::mesh::plan::InboundPlan;
use crate::mesh::sidecar::Action;
use crate::names::SpiffeId;

/// Requests to the authority in flight at once.
static ASKING: Semaphore = Semaphore::new(4);

pub async fn authorize(inb: &InboundPlan, caller: &SpiffeId, conn: &ServerConnection) -> Verdict {
    let Some(authority) = &inb.authority else {
        return inb.intentions.authorize(caller, &inb.trust_domain);
    };
    // Only service identities of this mesh can be the subject of an intention; anything
    // else is refused without asking.
    match caller {
        SpiffeId::Service { trust_domain, .. }
            if trust_domain.eq_ignore_ascii_case(&inb.trust_domain) => {}
        _ => {
            return (
                Action::Deny,
                format!(
                    "{caller} is not a service of trust domain {}",
                    inb.trust_domain
                ),
            )
        }
    }
    let uri = caller.to_string();
    if let Some(v) = authority.0.cached(&uri) {
        return v;
    }
    let _permit = ASKING.acquire().await;
    if let Some(v) = authority.0.cached(&uri) {
        return v;
    }
    let serial = serial(conn);
    let authority = authority.0.clone();
    smol::unblock(move || authority.ask(&uri, &serial)).await
}

/// The caller certificate's serial as Consul writes serials (`0a:1b:...`).
fn serial(conn: &ServerConnection) -> String {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| X509Certificate::from_der(leaf).ok())
        .map(|(_, cert)| cert.raw_serial_as_string())
        .unwrap_or_default()
}
