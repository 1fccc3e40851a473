//! One upstream connection: a local app's plaintext, mTLS to the target with its SNI and
//! exact identity, through whichever endpoints the mode chose.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use futures_rustls::TlsConnector;
use smol::Async;

use super::serving::UpstreamRuntime;
use super::tls_relay::relay_tls;
use super::{deadline, dial};
use crate::mesh::plan::UpstreamPlan;
use crate::metrics::{Tally, UpstreamMetrics};

/// How long a plaintext-to-mTLS pair may stay silent both ways; Envoy's tcp_proxy default.
const IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

pub async fn serve<L>(local: Async<L>, up: &UpstreamPlan, rt: &UpstreamRuntime, m: &UpstreamMetrics)
where
    L: super::tls_relay::ShutdownWrite,
    for<'a> &'a L: Read + Write,
{
    let started = Instant::now();
    let _held = rt.stats.hold();
    let Some(tls) = Box::pin(open(up, rt, m)).await else {
        return;
    };
    let (remote, mut tls) = tls.into_inner();
    match relay_tls(
        &local,
        &remote,
        &mut tls,
        IDLE,
        Tally::new(&m.bytes_to_upstream, &rt.stats.from_client),
        Tally::new(&m.bytes_from_upstream, &rt.stats.to_client),
    )
    .await
    {
        Ok(r) => crate::debug!(
            "upstream {}: {:?} after {:?}, {} bytes up, {} down",
            up.destination_name,
            r.end,
            started.elapsed(),
            r.a_to_b,
            r.b_to_a
        ),
        Err(e) => crate::debug!(
            "upstream {}: {e} after {:?}",
            up.destination_name,
            started.elapsed()
        ),
    }
}

/// Connects and completes the mTLS handshake; every failure is counted and logged here.
async fn open(
    up: &UpstreamPlan,
    rt: &UpstreamRuntime,
    m: &UpstreamMetrics,
) -> Option<futures_rustls::client::TlsStream<Async<TcpStream>>> {
    let (Some(cfg), Some(name)) = (rt.tls.clone(), up.server_name.clone()) else {
        return None;
    };
    let Some((tcp, endpoint)) =
        dial::connect_any(up.dial.view(), up.connect_timeout, &m.dial).await
    else {
        m.no_endpoint.inc();
        crate::debug!(
            "upstream {}: no endpoint answered ({:?})",
            up.destination_name,
            up.via
        );
        return None;
    };
    let handshake = TlsConnector::from(cfg).connect(name, tcp);
    match deadline::timeout(up.connect_timeout, "TLS handshake timed out", handshake).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            let why = m.handshake_failures.record(&e);
            crate::warn!(
                "upstream {}: mTLS to {endpoint} failed ({}): {e}",
                up.destination_name,
                why.label()
            );
            None
        }
    }
}
