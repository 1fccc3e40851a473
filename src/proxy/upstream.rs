//! One upstream connection: a local app's plaintext, mTLS to the target with its SNI and
//! exact identity, through whichever endpoints the mode chose.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};

use super::handshake::{handshake, Established};
use super::reactor::Async;
use super::serving::UpstreamRuntime;
use super::tls_relay::relay_tls;
use super::{deadline, dial};
use crate::mesh::plan::UpstreamPlan;
use crate::metrics::{Tally, UpstreamMetrics};

/// How long a plaintext-to-mTLS pair may stay silent both ways; Envoy's tcp_proxy default.
const IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

pub async fn serve<L>(local: Async<L>, up: &UpstreamPlan, rt: &UpstreamRuntime, m: &UpstreamMetrics)
where
    L: super::reactor::ShutdownWrite,
    for<'a> &'a L: Read + Write,
{
    let started = Instant::now();
    let _held = rt.stats.hold();
    let Some((remote, tls)) = Box::pin(open(up, rt, m)).await else {
        return;
    };
    match relay_tls(
        &local,
        &remote,
        tls,
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

/// Connects and completes the mTLS handshake, walking the chain's targets in order: the next
/// target when every endpoint of the current one failed to connect or to finish the
/// handshake within the connect timeout (or it has none). Every failure is counted and
/// logged here.
async fn open(
    up: &UpstreamPlan,
    rt: &UpstreamRuntime,
    m: &UpstreamMetrics,
) -> Option<(Async<TcpStream>, Established<ClientConnectionData>)> {
    // `no_endpoint` counts connections for which nothing answered at all; a handshake that
    // failed is counted as such instead.
    let mut connected = false;
    for (t, target) in up.targets.iter().enumerate() {
        let (Some(cfg), Some(name)) = (rt.tls(t), target.server_name.as_ref()) else {
            continue;
        };
        let mut order = target.dial.attempt_order().peekable();
        // As `dial::connect_any` counts them: held-back endpoints behind a fresh one.
        let reordered = order.peek().is_some_and(|&(_, _, held)| !held);
        let mut held_back = 0u64;
        let mut opened = None;
        for (index, endpoint, held) in order.by_ref() {
            held_back += u64::from(held);
            let Some(tcp) = dial::connect_at(
                target.dial.view(),
                index,
                endpoint,
                up.connect_timeout,
                &m.dial,
            )
            .await
            else {
                continue;
            };
            connected = true;
            let shaken = match UnbufferedClientConnection::new(cfg.clone(), name.clone()) {
                Ok(conn) => {
                    let shake = handshake(conn, &tcp);
                    deadline::timeout(up.connect_timeout, "TLS handshake timed out", shake).await
                }
                Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            };
            match shaken {
                Ok(tls) => {
                    target.dial.mark_ok(index);
                    opened = Some((tcp, tls));
                    break;
                }
                Err(e) => {
                    target.dial.mark_failed(index);
                    let why = m.handshake_failures.record(&e);
                    crate::warn!(
                        "upstream {}: mTLS to {endpoint} ({}) failed ({}): {e}",
                        up.destination_name,
                        target.sni,
                        why.label()
                    );
                }
            }
        }
        if reordered {
            held_back += order.filter(|&(_, _, held)| held).count() as u64;
            m.dial.endpoints_skipped.add(held_back);
        }
        if opened.is_some() {
            return opened;
        }
        crate::debug!(
            "upstream {}: no endpoint of target {} answered ({:?}){}",
            up.destination_name,
            target.sni,
            target.via,
            if t + 1 < up.targets.len() {
                ", trying the next target"
            } else {
                ""
            }
        );
    }
    if !connected {
        m.no_endpoint.inc();
    }
    None
}
