//! One gateway connection: classify (read the ClientHello's SNI), route, connect, relay.
//! The TLS bytes are forwarded untouched; nothing here decrypts.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use smol::future;
use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::reactor::Async;

use super::buffers::HelloBuf;
use super::deadline::Deadline;
use super::dial;
use super::relay::{relay, RelayEnd, Relayed};
use std::sync::Arc;

use super::listener::Active;
use super::pending::{Pending, Waiting};
use super::Serving;
use crate::client_hello::{self, Hello, ServerName};
use crate::mesh::plan::GatewayPlan;
use crate::mesh::routes::Route;
use crate::mesh::snapshot::Splice;
use crate::mesh::Endpoint;
use crate::metrics::{ConnStats, GatewayMetrics, Held, HelloOutcome, Tally};

/// The gateway listener's entry: the plan the connection was accepted under, kept to its end;
/// `pending`, the process's connections waiting for their ClientHello.
pub async fn accept(
    serving: Arc<Serving>,
    client: Async<TcpStream>,
    peer: SocketAddr,
    active: Active,
    pending: Arc<Pending>,
) {
    if let Some(role) = serving.plan.gateway.as_ref() {
        serve(
            client,
            peer,
            (role, serving.gateway_splice),
            serving.routes(),
            (&active.metrics.gateway, &pending),
        )
        .await;
    }
}

/// `stats`: the counters of each of `gw`'s routes, in the same order; `splice`: its `splice`
/// as this process runs it (`Serving::gateway_splice`).
pub async fn serve(
    client: Async<TcpStream>,
    peer: SocketAddr,
    (gw, splice): (&GatewayPlan, Splice),
    stats: &[Arc<ConnStats>],
    (m, pending): (&GatewayMetrics, &Pending),
) {
    let started = Instant::now();
    // Classifying and dialing are brief; boxing them keeps their state out of the future that
    // a held connection keeps for its whole life.
    let Some(opened) = Box::pin(open(&client, peer, gw, stats, (m, pending))).await else {
        return;
    };
    let stats = opened.stats;
    let result = forward(
        (&client, opened.client_drained),
        &opened.backend,
        opened.hello,
        (gw.settings.idle_timeout, splice),
        (
            Tally::new(&m.bytes_from_client, &stats.from_client),
            Tally::new(&m.bytes_to_client, &stats.to_client),
        ),
        &m.idle_timeouts,
    )
    .await;
    let (route, endpoint, sni) = (
        &opened.route.target,
        opened.endpoint,
        opened.sni.as_deref().unwrap_or("?"),
    );
    match result {
        Ok(r) => crate::debug!(
            "gateway {peer}: {sni:?} to {route} via {endpoint}: {:?} after {:?}, {} bytes up, {} down",
            r.end,
            started.elapsed(),
            r.a_to_b,
            r.b_to_a
        ),
        Err(e) => crate::debug!("gateway {peer}: {sni:?} to {route} via {endpoint}: {e} after {:?}", started.elapsed()),
    }
}

/// A routed connection with its backend connected, ready to relay.
struct Opened<'a> {
    backend: Async<TcpStream>,
    route: Route<'a>,
    stats: &'a ConnStats,
    endpoint: &'a Endpoint,
    hello: HelloBuf,
    /// The ClientHello's last read left the client's socket empty.
    client_drained: bool,
    /// The client's SNI, kept only when debug logging will print it.
    sni: Option<Box<str>>,
    /// Counts the connection as active on its route while it lives.
    _held: Held<'a>,
}

/// Classify, route, connect; every refusal is counted and logged here.
async fn open<'a>(
    client: &Async<TcpStream>,
    peer: SocketAddr,
    gw: &'a GatewayPlan,
    stats: &'a [Arc<ConnStats>],
    (m, pending): (&GatewayMetrics, &Pending),
) -> Option<Opened<'a>> {
    let settings = &gw.settings;
    let mut hello = HelloBuf::default();
    let mut waiting = Waiting::enter(pending, settings.max_pending_handshakes, &m.hello_shed);
    let classified = future::or(
        async {
            let limit = settings.max_client_hello_bytes;
            Some(classify(client, &mut hello, limit, settings.handshake_timeout).await)
        },
        async {
            (&mut waiting).await;
            None
        },
    )
    .await;
    drop(waiting);
    let (name, client_drained) = match classified {
        Some(Ok(classified)) => classified,
        None => {
            crate::debug!(
                "gateway {peer}: closed, shed: the oldest of max_pending_handshakes ({}) connections waiting for their ClientHello",
                settings.max_pending_handshakes
            );
            return None;
        }
        Some(Err(outcome)) => {
            m.hello(outcome).inc();
            crate::debug!(
                "gateway {peer}: closed, {} after {} bytes",
                outcome.label(),
                hello.filled().len()
            );
            return None;
        }
    };
    let found = gw.routes.find(&name).and_then(|(i, how)| {
        let route = gw.routes.route(i)?;
        Some((route, &**stats.get(i)?, how))
    });
    let Some((route, stats, how)) = found else {
        let outcome = if gw.routes.is_unknown_subset(&name) {
            HelloOutcome::UnknownSubset
        } else {
            HelloOutcome::UnknownSni
        };
        m.hello(outcome).inc();
        crate::debug!("gateway {peer}: closed, {} {name:?}", outcome.label());
        return None;
    };
    m.hello(HelloOutcome::Routed).inc();
    let held = stats.hold();
    let Some((backend, endpoint)) =
        dial::connect_any(route.endpoints, settings.connect_timeout, &m.dial).await
    else {
        m.no_endpoint.inc();
        crate::debug!(
            "gateway {peer}: closed, no endpoint of {} answered for {name:?} ({how:?})",
            route.target
        );
        return None;
    };
    let sni = crate::log::enabled(crate::log::Level::Debug).then(|| name.as_str().into());
    Some(Opened {
        backend,
        route,
        stats,
        endpoint,
        hello,
        client_drained,
        sni,
        _held: held,
    })
}

/// Reads until the ClientHello names a server, or says why it never will. With the name,
/// whether the last read left the socket empty (it came back shorter than the room it had).
async fn classify(
    client: &Async<TcpStream>,
    hello: &mut HelloBuf,
    limit: usize,
    timeout: Duration,
) -> Result<(ServerName, bool), HelloOutcome> {
    let reading = async {
        loop {
            let spare = hello.spare(limit);
            let room = spare.len();
            if room == 0 {
                return Err(HelloOutcome::TooLarge);
            }
            let mut reader = client;
            let n = match reader.read(spare).await {
                Ok(0) | Err(_) => return Err(HelloOutcome::Closed),
                Ok(n) => n,
            };
            hello.advance(n);
            match client_hello::inspect(hello.filled(), limit) {
                Hello::Incomplete => {}
                Hello::Sni(name) => return Ok((name, n < room)),
                Hello::NoSni => return Err(HelloOutcome::NoSni),
                Hello::NotTls => return Err(HelloOutcome::NotTls),
                Hello::TooLarge => return Err(HelloOutcome::TooLarge),
            }
        }
    };
    future::or(reading, async {
        Deadline::after(timeout).await;
        Err(HelloOutcome::Timeout)
    })
    .await
}

/// Sends the bytes already read, frees them, then relays.
async fn forward(
    (client, client_drained): (&Async<TcpStream>, bool),
    backend: &Async<TcpStream>,
    hello: HelloBuf,
    (idle, splice): (Duration, Splice),
    (from_client, to_client): (Tally<'_>, Tally<'_>),
    idle_timeouts: &crate::metrics::Counter,
) -> io::Result<Relayed> {
    let mut writer = backend;
    writer.write_all(hello.filled()).await?;
    from_client.add(hello.filled().len() as u64);
    drop(hello);
    let relayed = relay(
        (client, client_drained),
        backend,
        (idle, splice),
        from_client,
        to_client,
    )
    .await?;
    if relayed.end == RelayEnd::Idle {
        idle_timeouts.inc();
    }
    Ok(relayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection future is what every held connection costs on the heap (besides its
    /// sockets' reactor entries): keep large buffers out of it.
    #[test]
    fn connection_future_stays_small() {
        let snapshot = crate::mesh::snapshot::testing::gateway("td.consul", &[], 0);
        let plan = crate::mesh::plan(&snapshot);
        let Some(gw) = plan.gateway.as_ref() else {
            panic!("no gateway plan")
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let stream = Async::new(client).unwrap();
        let metrics = GatewayMetrics::default();
        let pending = Pending::default();
        let peer = "127.0.0.1:1".parse().unwrap();
        let fut = serve(stream, peer, (gw, Splice::Auto), &[], (&metrics, &pending));
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1344, "connection future is {size} bytes");
    }
}
