//! Connecting to one of a route's endpoints: a timeout per attempt, the next endpoint on
//! failure, and recent failures remembered so a dead endpoint is tried last.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use smol::{future, Async};

use super::deadline::Deadline;

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
            // Our own shortage, not the endpoint's fault: keep its standing.
            Err(e) if out_of_fds(&e) => {
                metrics.connect_failures.inc();
                crate::warn!(
                    "connect to {endpoint}: {e} (this process is out of file descriptors)"
                );
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

/// How often a dial retries while the process is out of file descriptors.
const FD_RETRY: Duration = Duration::from_millis(50);

/// The process (or system) has no descriptor or buffer memory for another socket.
pub fn out_of_fds(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(e.raw_os_error(), Some(code) if [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|errno| errno.raw_os_error() == code))
}

/// Connects within `timeout`. Out of file descriptors, it waits for a connection to close and
/// tries again within the same timeout: the client was already accepted, and refusing it
/// would drain the accept queue with refusals while accepting is meant to pause.
pub async fn connect_one(endpoint: &Endpoint, timeout: Duration) -> io::Result<Async<TcpStream>> {
    let starved = std::cell::Cell::new(None);
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
        let stream = loop {
            match Async::<TcpStream>::connect(addr).await {
                Err(e) if out_of_fds(&e) => {
                    starved.set(e.raw_os_error());
                    // Pipes kept for splicing are descriptors a connection can use instead.
                    super::buffers::release_pipes();
                    Deadline::after(FD_RETRY).await;
                }
                other => break other?,
            }
        };
        stream.get_ref().set_nodelay(true)?;
        Ok(stream)
    };
    future::or(attempt, async {
        Deadline::after(timeout).await;
        Err(match starved.get() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        })
    })
    .await
}
