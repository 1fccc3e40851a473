//! Connecting to one of a route's endpoints: a timeout per attempt, the next endpoint on
//! failure, and recent failures remembered so a dead endpoint is tried last.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use smol::Async;

use super::deadline;

use crate::mesh::endpoints::EndpointSet;
use crate::mesh::Endpoint;
use crate::metrics::DialMetrics;

/// Connects to the first endpoint that answers, or `None` when none did.
pub async fn connect_any<'a>(
    set: &'a EndpointSet,
    timeout: Duration,
    metrics: &DialMetrics,
) -> Option<(Async<TcpStream>, &'a Endpoint)> {
    for (index, endpoint, held_back) in set.attempt_order() {
        if held_back {
            metrics.endpoints_skipped.inc();
        }
        match connect_one(endpoint, timeout).await {
            Ok(stream) => {
                set.mark_ok(index);
                return Some((stream, endpoint));
            }
            Err(e) => {
                metrics.connect_failures.inc();
                set.mark_failed(index);
                crate::debug!("connect to {endpoint} failed: {e}");
            }
        }
    }
    None
}

pub async fn connect_one(endpoint: &Endpoint, timeout: Duration) -> io::Result<Async<TcpStream>> {
    let attempt = async {
        let addr: SocketAddr = match endpoint {
            Endpoint::Addr(a) => *a,
            // Names are resolved on a blocking thread by smol; the first address is used,
            // and a name with no address is a failed attempt like a refused connection.
            Endpoint::Host { host, port } => smol::net::resolve((&**host, *port))
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name has no address"))?,
        };
        let stream = Async::<TcpStream>::connect(addr).await?;
        stream.get_ref().set_nodelay(true)?;
        Ok(stream)
    };
    deadline::timeout(timeout, "connect timed out", attempt).await
}
