//! Accepting connections: the connection limit first, back-off when out of file descriptors,
//! then one task per connection on the event loop.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use smol::{Async, LocalExecutor, Timer};

use super::upstream;
use crate::mesh::Plan;
use crate::metrics::{Counter, ListenerCounters, Metrics};
use std::future::Future;
use std::net::SocketAddr;

/// How long accepting pauses when the process is out of file descriptors: long enough for
/// connections to finish, short enough that nobody notices.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);

/// Accepts TCP connections for one role: the connection limit first (refuse, never queue),
/// then one task per connection running `serve`, counted as active while it lives.
pub async fn tcp_accept_loop<F, Fut>(
    listener: Async<TcpListener>,
    ex: Rc<LocalExecutor<'static>>,
    metrics: Arc<Metrics>,
    counters: fn(&Metrics) -> ListenerCounters<'_>,
    limit: usize,
    serve: F,
) where
    F: Fn(Async<TcpStream>, SocketAddr, Active) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let local = listener.get_ref().local_addr().ok();
    loop {
        let c = counters(&metrics);
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(&e, c.accept_errors, local).await;
                continue;
            }
        };
        c.accepted.inc();
        if c.active.get() >= limit as u64 {
            // Refuse rather than queue: a queue here would be unbounded memory and latency.
            c.refused_limit.inc();
            crate::debug!(
                "{local:?} {peer}: refused, {} connections open",
                c.active.get()
            );
            drop(stream);
            continue;
        }
        // The guard travels inside the connection's own future: wrapping that future in
        // another one to hold the guard would lay it out twice per connection.
        let active = Active::new(metrics.clone(), counters);
        ex.spawn(serve(stream, peer, active)).detach();
    }
}

async fn accept_failed(e: &io::Error, errors: &Counter, local: Option<std::net::SocketAddr>) {
    errors.inc();
    let out_of_fds = matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
        || code == rustix::io::Errno::NFILE.raw_os_error()
        || code == rustix::io::Errno::NOBUFS.raw_os_error()
        || code == rustix::io::Errno::NOMEM.raw_os_error());
    if out_of_fds {
        crate::warn!(
            "listener {local:?}: cannot accept ({e}); pausing accepts for {EMFILE_PAUSE:?}"
        );
        Timer::after(EMFILE_PAUSE).await;
    } else {
        // ECONNABORTED and friends: the client gave up between SYN and accept.
        crate::debug!("listener {local:?}: accept failed: {e}");
    }
}

/// Counts a connection as active (in its role's counters) for as long as it is held, and
/// gives the connection its metrics.
pub struct Active {
    pub metrics: Arc<Metrics>,
    counters: fn(&Metrics) -> ListenerCounters<'_>,
}

impl Active {
    fn new(metrics: Arc<Metrics>, counters: fn(&Metrics) -> ListenerCounters<'_>) -> Self {
        counters(&metrics).active.inc();
        Active { metrics, counters }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        (self.counters)(&self.metrics).active.dec();
    }
}

/// Where a local app connects to an upstream.
pub enum LocalListener {
    Tcp(Async<TcpListener>),
    Unix(Async<UnixListener>),
}

pub async fn upstream_accept_loop(
    listener: LocalListener,
    ex: Rc<LocalExecutor<'static>>,
    plan: Arc<Plan>,
    index: usize,
    metrics: Arc<Metrics>,
) {
    loop {
        let accepted = match &listener {
            LocalListener::Tcp(l) => l.accept().await.map(|(s, _)| Local::Tcp(s)),
            LocalListener::Unix(l) => l.accept().await.map(|(s, _)| Local::Unix(s)),
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                accept_failed(&e, &metrics.upstream.accept_errors, None).await;
                continue;
            }
        };
        metrics.upstream.accepted.inc();
        let active = Active::new(metrics.clone(), Metrics::upstream_listener);
        let plan = plan.clone();
        ex.spawn(async move {
            let Some(up) = plan.upstreams.get(index) else {
                return;
            };
            let m = &active.metrics.upstream;
            match stream {
                Local::Tcp(s) => {
                    let _ = s.get_ref().set_nodelay(true);
                    upstream::serve(s, up, m).await;
                }
                Local::Unix(s) => upstream::serve(s, up, m).await,
            }
        })
        .detach();
    }
}

enum Local {
    Tcp(Async<TcpStream>),
    Unix(Async<UnixStream>),
}
