//! Accepting connections: the connection limit first, back-off when out of file descriptors,
//! then one task per connection on the event loop.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use smol::{Async, LocalExecutor, Timer};

use super::{gateway, upstream};
use crate::mesh::Plan;
use crate::metrics::{Counter, Metrics};

/// How long accepting pauses when the process is out of file descriptors: long enough for
/// connections to finish, short enough that nobody notices.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);

pub async fn gateway_accept_loop(
    listener: Async<TcpListener>,
    ex: Rc<LocalExecutor<'static>>,
    plan: Arc<Plan>,
    metrics: Arc<Metrics>,
) {
    let local = listener.get_ref().local_addr().ok();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(&e, &metrics.gateway.accept_errors, local).await;
                continue;
            }
        };
        let m = &metrics.gateway;
        m.accepted.inc();
        let Some(gw) = plan.gateway.as_ref() else {
            return;
        };
        if m.active.get() >= gw.settings.max_connections as u64 {
            // Refuse rather than queue: a queue here would be unbounded memory and latency.
            m.refused_limit.inc();
            crate::debug!(
                "gateway {peer}: refused, {} connections open",
                m.active.get()
            );
            drop(stream);
            continue;
        }
        let active = Active::new(metrics.clone(), |m| &m.gateway.active);
        let plan = plan.clone();
        ex.spawn(async move {
            if let Some(gw) = plan.gateway.as_ref() {
                gateway::serve(stream, peer, gw, &active.metrics.gateway).await;
            }
        })
        .detach();
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

/// Counts a connection as active (in the counter `which` picks) for as long as it lives.
struct Active {
    metrics: Arc<Metrics>,
    which: fn(&Metrics) -> &Counter,
}

impl Active {
    fn new(metrics: Arc<Metrics>, which: fn(&Metrics) -> &Counter) -> Self {
        which(&metrics).inc();
        Active { metrics, which }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        (self.which)(&self.metrics).dec();
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
        let active = Active::new(metrics.clone(), |m| &m.upstream.active);
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
