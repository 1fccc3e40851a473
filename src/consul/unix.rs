//! HTTP to the agent over a Unix socket (`unix:///path`, Consul's `addresses { http =
//! "unix:///..." }`): a ureq connector that opens the socket instead of resolving and
//! dialling the URL's host. ureq drives HTTP over any `Transport`; this one is a
//! `UnixStream`, with the same timeouts and shutdown as ureq's TCP transport.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, ShutdownHandle, Transport,
};
use ureq::Error;

/// Opens the agent's socket for every connection.
#[derive(Debug)]
pub struct UnixConnector(pub PathBuf);

impl Connector for UnixConnector {
    type Out = UnixTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Self::Out>, Error> {
        let stream = Arc::new(Socket(UnixStream::connect(&self.0)?));
        let config = &details.config;
        let transport = UnixTransport {
            stream: stream.clone(),
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
        };
        let handle: Weak<dyn ShutdownHandle> = Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>;
        (details.register_shutdown)(handle)?;
        Ok(Some(transport))
    }
}

/// No name to resolve: the connector knows the socket. ureq wants one address.
#[derive(Debug)]
pub struct NoResolve;

impl Resolver for NoResolve {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        let mut addrs = ResolvedSocketAddrs::from_fn(|_| unspecified());
        addrs.truncate(0);
        addrs.push(unspecified());
        Ok(addrs)
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

#[derive(Debug)]
pub struct UnixTransport {
    /// Shared with the shutdown handle, which ends blocked reads when the client shuts down.
    stream: Arc<Socket>,
    buffers: LazyBuffers,
}

/// The socket as ureq's shutdown handle (a local type: the trait and `UnixStream` are
/// both foreign).
#[derive(Debug)]
struct Socket(UnixStream);

impl ShutdownHandle for Socket {
    fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

impl std::ops::Deref for Socket {
    type Target = UnixStream;

    fn deref(&self) -> &UnixStream {
        &self.0
    }
}

impl Transport for UnixTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        self.stream
            .set_write_timeout(timeout.not_zero().map(|t| *t))?;
        let output = &self.buffers.output()[..amount];
        (&self.stream.0)
            .write_all(output)
            .map_err(|e| io_error(e, timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = timeout.for_read();
        self.stream
            .set_read_timeout(timeout.not_zero().map(|t| *t))?;
        let input = self.buffers.input_append_buf();
        let amount = loop {
            match (&self.stream.0).read(input) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.map_err(|e| io_error(e, timeout))?,
            }
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // A pooled connection the agent closed reads EOF at once; one still open would
        // block, which a non-blocking peek tells without consuming anything.
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut buf = [0u8; 1];
        let open = matches!(
            (&self.stream.0).read(&mut buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        self.stream.set_nonblocking(false).is_ok() && open
    }
}

fn io_error(e: std::io::Error, timeout: NextTimeout) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            Error::Timeout(timeout.reason)
        }
        _ => e.into(),
    }
}
