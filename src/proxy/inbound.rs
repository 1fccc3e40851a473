//! One inbound connection: terminate mTLS from the mesh, authorize the caller's SPIFFE ID,
//! hand plain TCP to the local app.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::reactor::Async;
use rustls::server::UnbufferedServerConnection;

use super::deadline;
use super::handshake::handshake;
use super::tls_relay::relay_tls;
use std::sync::Arc;

use super::listener::Active;
use super::Serving;
use crate::mesh::intentions::{self, Action};
use crate::mesh::plan::InboundPlan;
use crate::mesh::Endpoint;
use crate::metrics::{InboundMetrics, Tally};
use crate::tls::configs::{caller, caller_serial};

/// Time a caller has to complete its handshake; Consul's proxies use 10 s.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's tcp_proxy default idle timeout.
const IDLE: Duration = Duration::from_secs(3600);

/// The inbound listener's entry: the plan the connection was accepted under, kept to its end.
pub async fn accept(
    serving: Arc<Serving>,
    mesh: Async<TcpStream>,
    peer: SocketAddr,
    active: Active,
) {
    if let (Some(role), Some(tls)) = (serving.plan.inbound.as_ref(), serving.inbound_tls()) {
        serve(mesh, peer, role, tls, &active.metrics.inbound).await;
    }
}

pub async fn serve(
    mesh: Async<TcpStream>,
    peer: SocketAddr,
    inb: &InboundPlan,
    tls: &Arc<rustls::ServerConfig>,
    m: &InboundMetrics,
) {
    let started = Instant::now();
    let shaken = match UnbufferedServerConnection::new(tls.clone()) {
        Ok(conn) => {
            let shake = handshake(conn, &mesh);
            deadline::timeout(HANDSHAKE_TIMEOUT, "handshake timed out", shake).await
        }
        Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    };
    let mut tls = match shaken {
        Ok(tls) => tls,
        Err(e) => {
            let why = m.handshake_failures.record(&e);
            crate::debug!("inbound {peer}: handshake failed ({}): {e}", why.label());
            return;
        }
    };
    // The leaf is kept only until the caller is authorized.
    let leaf = tls.peer_leaf.take();
    let Some(id) = leaf.as_ref().and_then(caller) else {
        m.denied.inc();
        crate::info!("inbound {peer}: denied, client certificate has no SPIFFE service ID");
        return;
    };
    let (action, why) = intentions::authorize(
        &inb.intentions,
        inb.authority.as_ref(),
        &inb.trust_domain,
        &id,
        || leaf.as_ref().map(caller_serial).unwrap_or_default(),
    )
    .await;
    drop(leaf);
    if action == Action::Deny {
        m.denied.inc();
        crate::info!("inbound {peer}: denied {id} ({why})");
        return;
    }
    let Some(app) = connect_local(&inb.local_service_address, inb.local_connect_timeout).await
    else {
        m.local_connect_failures.inc();
        crate::warn!(
            "inbound {peer}: local app at {} did not accept",
            inb.local_service_address
        );
        return;
    };
    let (to_mesh, from_mesh) = (
        Tally::role(&m.bytes_to_mesh),
        Tally::role(&m.bytes_from_mesh),
    );
    match relay_tls(&app, &mesh, tls, IDLE, to_mesh, from_mesh).await {
        Ok(r) => crate::debug!(
            "inbound {peer}: {id} ({why}): {:?} after {:?}, {} bytes in, {} out",
            r.end,
            started.elapsed(),
            r.b_to_a,
            r.a_to_b
        ),
        Err(e) => crate::debug!("inbound {peer}: {id}: {e} after {:?}", started.elapsed()),
    }
}

async fn connect_local(app: &Endpoint, timeout: Duration) -> Option<Async<TcpStream>> {
    super::dial::connect_one(app, timeout).await.ok()
}
