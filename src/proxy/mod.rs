//! The data path: listeners and the per-connection pipelines, on one event loop thread.

mod authorize;
mod buffers;
mod dial;
mod gateway;
mod inbound;
mod listener;
mod relay;
mod tls_relay;
mod upstream;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use smol::channel::{self, Sender};
use smol::{Async, LocalExecutor};

use crate::mesh::sidecar::Bind;
use crate::mesh::Plan;
use crate::metrics::Metrics;
use std::os::unix::net::UnixListener;

/// Inbound connections held at once; more are refused at accept.
const INBOUND_LIMIT: usize = 4096;

/// A running sidegate: where it listens and how to stop it. Tests start one on port 0.
pub struct Running {
    pub gateway_addrs: Vec<SocketAddr>,
    /// TCP upstream listeners, in plan order (Unix ones are at their paths).
    pub upstream_addrs: Vec<SocketAddr>,
    pub inbound_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
pub struct BindError {
    pub addr: SocketAddr,
    pub error: io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot listen on {}: {}", self.addr, self.error)?;
        if self.error.kind() == io::ErrorKind::PermissionDenied && self.addr.port() < 1024 {
            write!(f, " (ports below 1024 need CAP_NET_BIND_SERVICE)")?;
        }
        Ok(())
    }
}

impl std::error::Error for BindError {}

/// Binds every listener of the plan, then serves it on a new thread. Binding happens here,
/// before anything is served, so a taken port is an error to the caller, not a log line.
pub fn start(plan: Plan) -> Result<Running, BindError> {
    raise_fd_limit();
    let mut gateway_listeners = Vec::new();
    for &addr in plan.gateway.iter().flat_map(|g| &g.settings.listen) {
        let bound = TcpListener::bind(addr)
            .and_then(Async::new)
            .map_err(|error| BindError { addr, error })?;
        gateway_listeners.push(bound);
    }
    let gateway_addrs = gateway_listeners
        .iter()
        .map(|l| l.get_ref().local_addr())
        .collect::<io::Result<Vec<_>>>()
        .map_err(|error| BindError {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            error,
        })?;
    for addr in &gateway_addrs {
        crate::info!("gateway listening on {addr}");
    }
    let inbound_listener = match &plan.inbound {
        Some(inb) => {
            let l = TcpListener::bind(inb.listen)
                .and_then(Async::new)
                .map_err(|error| BindError {
                    addr: inb.listen,
                    error,
                })?;
            let addr = l.get_ref().local_addr().map_err(|error| BindError {
                addr: inb.listen,
                error,
            })?;
            crate::info!(
                "inbound listening on {addr} for {}",
                inb.local_service_address
            );
            Some((l, addr))
        }
        None => None,
    };
    let inbound_addr = inbound_listener.as_ref().map(|(_, a)| *a);
    let inbound_listener = inbound_listener.map(|(l, _)| l);
    let mut upstream_listeners = Vec::new();
    let mut upstream_addrs = Vec::new();
    for (index, up) in plan.upstreams.iter().enumerate() {
        let listener = bind_local(&up.listen).map_err(|error| BindError {
            addr: bind_addr(&up.listen),
            error,
        })?;
        if let listener::LocalListener::Tcp(l) = &listener {
            upstream_addrs.push(l.get_ref().local_addr().map_err(|error| BindError {
                addr: bind_addr(&up.listen),
                error,
            })?);
        }
        crate::info!(
            "upstream {} listening on {} ({:?}, mode {:?})",
            up.destination_name,
            up.listen,
            up.via,
            up.mode
        );
        upstream_listeners.push((index, listener));
    }
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = channel::bounded::<()>(1);
    let plan = Arc::new(plan);
    let thread_metrics = metrics.clone();
    let thread = std::thread::Builder::new()
        .name("sidegate-loop".into())
        .spawn(move || {
            let ex = Rc::new(LocalExecutor::new());
            let gateway_limit = plan
                .gateway
                .as_ref()
                .map_or(0, |g| g.settings.max_connections);
            for l in gateway_listeners {
                let plan = plan.clone();
                let serve = move |s, peer, active| gateway::accept(plan.clone(), s, peer, active);
                let m = thread_metrics.clone();
                let limit = gateway_limit;
                ex.spawn(listener::tcp_accept_loop(
                    l,
                    ex.clone(),
                    m,
                    Metrics::gateway_listener,
                    limit,
                    serve,
                ))
                .detach();
            }
            if let Some(l) = inbound_listener {
                let plan = plan.clone();
                let serve = move |s, peer, active| inbound::accept(plan.clone(), s, peer, active);
                let m = thread_metrics.clone();
                ex.spawn(listener::tcp_accept_loop(
                    l,
                    ex.clone(),
                    m,
                    Metrics::inbound_listener,
                    INBOUND_LIMIT,
                    serve,
                ))
                .detach();
            }
            for (index, l) in upstream_listeners {
                let accept = listener::upstream_accept_loop(
                    l,
                    ex.clone(),
                    plan.clone(),
                    index,
                    thread_metrics.clone(),
                );
                ex.spawn(accept).detach();
            }
            // Ends when every `stop` sender is gone; dropping the executor closes everything.
            smol::block_on(ex.run(async { while stopped.recv().await.is_ok() {} }));
        })
        .map_err(|error| BindError {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            error,
        })?;
    Ok(Running {
        gateway_addrs,
        upstream_addrs,
        inbound_addr,
        metrics,
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl Running {
    /// Stops serving and closes every connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Blocks until the event loop ends.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn shutdown(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds an upstream's local listener. A Unix socket left by an earlier run is replaced (any
/// other file at that path is an error), then given its configured mode.
fn bind_local(bind: &Bind) -> io::Result<listener::LocalListener> {
    match bind {
        Bind::Tcp(addr) => Ok(listener::LocalListener::Tcp(Async::new(
            TcpListener::bind(addr)?,
        )?)),
        Bind::Unix { path, mode } => {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(path)?;
            }
            let l = UnixListener::bind(path)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
            }
            Ok(listener::LocalListener::Unix(Async::new(l)?))
        }
    }
}

/// The address a bind error is reported for (a Unix socket has none).
fn bind_addr(bind: &Bind) -> SocketAddr {
    match bind {
        Bind::Tcp(a) => *a,
        Bind::Unix { .. } => SocketAddr::from(([0, 0, 0, 0], 0)),
    }
}

/// A gateway holding a thousand connections needs two thousand descriptors; the usual soft
/// limit is 1024 while the hard limit is far higher. Go and systemd raise it the same way.
fn raise_fd_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
            crate::warn!("cannot raise the open-file limit: {e}");
        }
    }
}
