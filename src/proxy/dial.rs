//! Connecting to one of a route's endpoints: a timeout per attempt, the next endpoint on
//! failure, and recent failures remembered so a dead endpoint is tried last.
//!
//! An endpoint given by name is tried at each of its first `NAME_ADDRESSES` addresses in the
//! resolver's order: a name often has an address whose path is dead (`localhost` is `::1`
//! first on a stock Debian `/etc/hosts`; a load balancer's AAAA records on an IPv4-only
//! network) beside one that answers.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use smol::future;

use super::reactor::Async;

use super::deadline::Deadline;

use crate::mesh::endpoints::Endpoints;
use crate::mesh::Endpoint;
use crate::metrics::DialMetrics;

/// How many of a name's addresses one attempt at it tries. Each has `connect_timeout_ms` (a
/// silent address costs what a silent endpoint costs), so a name is done within this many
/// connect timeouts; resolving the name counts against the first.
const NAME_ADDRESSES: usize = 4;

/// Connects to the first endpoint that answers, or `None` when none did.
pub async fn connect_any<'a>(
    set: Endpoints<'a>,
    timeout: Duration,
    metrics: &DialMetrics,
) -> Option<(Async<TcpStream>, &'a Endpoint)> {
    let mut order = set.attempt_order().peekable();
    // Recently failed endpoints come after all others. They were moved there, and are counted
    // as skipped whether or not this connection then needs them, only if another endpoint is
    // ahead of them: when every endpoint failed recently, the order is the plain rotation.
    let reordered = order.peek().is_some_and(|&(_, _, held)| !held);
    let mut held_back = 0u64;
    let mut answered = None;
    for (index, endpoint, held) in order.by_ref() {
        held_back += u64::from(held);
        let failed = |addr: Option<SocketAddr>, e: &io::Error| {
            metrics.connect_failures.inc();
            log_failure(endpoint, addr, e);
        };
        match connect(endpoint, timeout, failed).await {
            Ok(stream) => {
                set.mark_ok(index);
                answered = Some((stream, endpoint));
                break;
            }
            // Our own shortage, not the endpoint's fault: keep its standing.
            Err(e) if out_of_fds(&e) => {}
            Err(_) => set.mark_failed(index),
        }
    }
    if reordered {
        held_back += order.filter(|&(_, _, held)| held).count() as u64;
        metrics.endpoints_skipped.add(held_back);
    }
    answered
}

/// Connects to the endpoint at `index` of `set` (one step of walking `attempt_order`
/// oneself, when more than a connection must succeed before the endpoint counts as good):
/// a failure is counted, logged and remembered; the caller marks it good or bad after.
pub async fn connect_at(
    set: Endpoints<'_>,
    index: usize,
    endpoint: &Endpoint,
    timeout: Duration,
    metrics: &DialMetrics,
) -> Option<Async<TcpStream>> {
    let failed = |addr: Option<SocketAddr>, e: &io::Error| {
        metrics.connect_failures.inc();
        log_failure(endpoint, addr, e);
    };
    match connect(endpoint, timeout, failed).await {
        Ok(stream) => Some(stream),
        // Our own shortage, not the endpoint's fault: keep its standing.
        Err(e) if out_of_fds(&e) => None,
        Err(_) => {
            set.mark_failed(index);
            None
        }
    }
}

/// Connects to one endpoint (at any of a name's addresses), logging each failed attempt.
pub async fn connect_one(endpoint: &Endpoint, timeout: Duration) -> io::Result<Async<TcpStream>> {
    connect(endpoint, timeout, |addr, e| log_failure(endpoint, addr, e)).await
}

/// One log line per failed attempt, naming the address when the endpoint is a name.
fn log_failure(endpoint: &Endpoint, addr: Option<SocketAddr>, e: &io::Error) {
    let at = At(addr);
    if out_of_fds(e) {
        crate::warn!("connect to {endpoint}{at}: {e} (this process is out of file descriptors)");
    } else {
        crate::debug!("connect to {endpoint}{at} failed: {e}");
    }
}

/// ` at ADDR` for one of a name's addresses, nothing otherwise.
struct At(Option<SocketAddr>);

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, " at {addr}"),
            None => Ok(()),
        }
    }
}

/// Connects to an address endpoint within `timeout`, or to a name's addresses in turn, and
/// calls `failed` for each attempt that failed: with the address for a name's address, with
/// `None` for an address endpoint or a name that did not resolve. Returns the last error.
async fn connect(
    endpoint: &Endpoint,
    timeout: Duration,
    mut failed: impl FnMut(Option<SocketAddr>, &io::Error),
) -> io::Result<Async<TcpStream>> {
    let due = Instant::now() + timeout;
    let (host, port) = match endpoint {
        // An IP literal never goes near the resolver (nor allocates).
        Endpoint::Addr(addr) => {
            return connect_addr(*addr, due)
                .await
                .inspect_err(|e| failed(None, e));
        }
        Endpoint::Host { host, port } => (&**host, *port),
    };
    // getaddrinfo blocks: smol runs it on its blocking thread pool, off the event loop.
    let resolving = smol::net::resolve((host, port));
    let addrs = super::deadline::timeout(timeout, "name resolution timed out", resolving)
        .await
        .inspect_err(|e| failed(None, e))?;
    connect_addrs(addrs, due, timeout, failed).await
}

/// Tries the first `NAME_ADDRESSES` of `addrs` in order, the first until `first_due`, each
/// later one for `timeout`; a name with no address is a failed attempt like a refused
/// connection.
async fn connect_addrs(
    addrs: impl IntoIterator<Item = SocketAddr>,
    first_due: Instant,
    timeout: Duration,
    mut failed: impl FnMut(Option<SocketAddr>, &io::Error),
) -> io::Result<Async<TcpStream>> {
    let mut due = first_due;
    let mut last = None;
    for addr in addrs.into_iter().take(NAME_ADDRESSES) {
        match connect_addr(addr, due).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                failed(Some(addr), &e);
                // Out of descriptors, the next address would wait for one just the same.
                if out_of_fds(&e) {
                    return Err(e);
                }
                last = Some(e);
            }
        }
        due = Instant::now() + timeout;
    }
    Err(last.unwrap_or_else(|| {
        let e = io::Error::new(io::ErrorKind::NotFound, "name has no address");
        failed(None, &e);
        e
    }))
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

/// Connects to `addr` by `due`. Out of file descriptors, it waits for a connection to close
/// and tries again until then: the client was already accepted, and refusing it would drain
/// the accept queue with refusals while accepting is meant to pause.
async fn connect_addr(addr: SocketAddr, due: Instant) -> io::Result<Async<TcpStream>> {
    let starved = std::cell::Cell::new(None);
    let attempt = async {
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
        Deadline::at(due).await;
        Err(match starved.get() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// An address nothing listens on: connecting is refused.
    fn refusing() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    /// A name's addresses as the resolver gave them; the failed attempts it reported.
    fn dial(addrs: &[SocketAddr]) -> (io::Result<Async<TcpStream>>, Vec<Option<SocketAddr>>) {
        let mut failed = Vec::new();
        let ex = smol::LocalExecutor::new();
        let got = super::super::reactor::run(ex.run(async {
            ex.spawn(super::super::deadline::sweeper()).detach();
            let due = Instant::now() + TIMEOUT;
            connect_addrs(addrs.iter().copied(), due, TIMEOUT, |a, _| failed.push(a)).await
        }))
        .unwrap();
        (got, failed)
    }

    /// Past a refusing first address to the one that answers, the refusal reported with its
    /// address: a name is not its first address.
    #[test]
    fn a_refusing_address_is_passed_for_the_next() {
        let live = TcpListener::bind("127.0.0.1:0").unwrap();
        let (dead, to) = (refusing(), live.local_addr().unwrap());
        let (got, failed) = dial(&[dead, to]);
        assert_eq!(got.unwrap().get_ref().peer_addr().unwrap(), to);
        assert_eq!(failed, [Some(dead)]);
    }

    /// Every address refusing: each reported once, at most `NAME_ADDRESSES` of them, and the
    /// last error returned; no address at all is one failure.
    #[test]
    fn every_address_refusing_is_one_failure_each_up_to_the_limit() {
        let dead: Vec<SocketAddr> = (0..NAME_ADDRESSES + 2).map(|_| refusing()).collect();
        let (got, failed) = dial(&dead);
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        let tried: Vec<_> = dead[..NAME_ADDRESSES].iter().copied().map(Some).collect();
        assert_eq!(failed, tried);

        let (got, failed) = dial(&[]);
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(failed, [None]);
    }
}
