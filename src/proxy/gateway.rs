//! One gateway connection: classify (read the ClientHello's SNI), route, connect, relay.
//! The TLS bytes are forwarded untouched; nothing here decrypts.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{future, Async, Timer};

use super::buffers::HelloBuf;
use super::dial;
use super::relay::{relay, RelayEnd, Relayed};
use crate::mesh::plan::GatewayPlan;
use crate::metrics::{GatewayMetrics, HelloOutcome};
use crate::sni::{self, Hello, ServerName};

pub async fn serve(
    client: Async<TcpStream>,
    peer: SocketAddr,
    gw: &GatewayPlan,
    m: &GatewayMetrics,
) {
    let started = Instant::now();
    let _ = client.get_ref().set_nodelay(true);
    let settings = &gw.settings;
    let mut hello = HelloBuf::default();
    let name = match classify(
        &client,
        &mut hello,
        settings.max_client_hello_bytes,
        settings.handshake_timeout,
    )
    .await
    {
        Ok(name) => name,
        Err(outcome) => {
            m.hello(outcome).inc();
            crate::debug!(
                "gateway {peer}: closed, {} after {} bytes",
                outcome.label(),
                hello.filled().len()
            );
            return;
        }
    };
    let Some((route, how)) = gw.routes.lookup(&name) else {
        m.hello(HelloOutcome::UnknownSni).inc();
        crate::debug!("gateway {peer}: closed, unknown_sni {name:?}");
        return;
    };
    m.hello(HelloOutcome::Routed).inc();
    let Some((backend, endpoint)) =
        dial::connect_any(&route.endpoints, settings.connect_timeout, m).await
    else {
        m.no_endpoint.inc();
        crate::debug!(
            "gateway {peer}: closed, no endpoint of {} answered for {name:?}",
            route.target
        );
        return;
    };
    let result = forward(&client, &backend, hello, settings.idle_timeout, m).await;
    match result {
        Ok(r) => crate::debug!(
            "gateway {peer}: {name:?} ({how:?}) to {} via {endpoint}: {:?} after {:?}, {} bytes up, {} down",
            route.target,
            r.end,
            started.elapsed(),
            r.a_to_b,
            r.b_to_a
        ),
        Err(e) => crate::debug!("gateway {peer}: {name:?} to {} via {endpoint}: {e} after {:?}", route.target, started.elapsed()),
    }
}

/// Reads until the ClientHello names a server, or says why it never will.
async fn classify(
    client: &Async<TcpStream>,
    hello: &mut HelloBuf,
    limit: usize,
    timeout: Duration,
) -> Result<ServerName, HelloOutcome> {
    let reading = async {
        loop {
            let spare = hello.spare(limit);
            if spare.is_empty() {
                return Err(HelloOutcome::TooLarge);
            }
            let mut reader = client;
            match reader.read(spare).await {
                Ok(0) | Err(_) => return Err(HelloOutcome::Closed),
                Ok(n) => hello.advance(n),
            }
            match sni::inspect(hello.filled(), limit) {
                Hello::Incomplete => {}
                Hello::Sni(name) => return Ok(name),
                Hello::NoSni => return Err(HelloOutcome::NoSni),
                Hello::NotTls => return Err(HelloOutcome::NotTls),
                Hello::TooLarge => return Err(HelloOutcome::TooLarge),
            }
        }
    };
    future::or(reading, async {
        Timer::after(timeout).await;
        Err(HelloOutcome::Timeout)
    })
    .await
}

/// Sends the bytes already read, frees them, then relays.
async fn forward(
    client: &Async<TcpStream>,
    backend: &Async<TcpStream>,
    hello: HelloBuf,
    idle: Duration,
    m: &GatewayMetrics,
) -> io::Result<Relayed> {
    let mut writer = backend;
    writer.write_all(hello.filled()).await?;
    m.bytes_from_client.add(hello.filled().len() as u64);
    drop(hello);
    let relayed = relay(
        client,
        backend,
        idle,
        &m.bytes_from_client,
        &m.bytes_to_client,
    )
    .await?;
    if relayed.end == RelayEnd::Idle {
        m.idle_timeouts.inc();
    }
    Ok(relayed)
}
