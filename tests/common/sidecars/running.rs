//! Sidecars of the fixtures' services started for tests, in-process or as `sidegate run`, and
//! mesh clients built by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::{ClientConfig, SupportedProtocolVersion};
use sidegate::names::SpiffeId;
use sidegate::proxy::Running;
use sidegate::tls::verify::SpiffeServerVerifier;

use super::Service;
use crate::common::{start, Child, TD};

impl Service {
    /// Consul's SPIFFE ID for this service: what its leaf names and its callers require.
    pub fn spiffe_id(&self) -> SpiffeId {
        SpiffeId::service(TD, self.partition, "default", self.dc, self.name)
    }

    /// This service's sidecar with only its inbound listener (on a loopback port), delivering
    /// to `app`, with these `[sidecar.intentions]` lines.
    pub fn inbound(&self, app: SocketAddr, intentions: &str) -> Running {
        start(&self.inbound_toml(app, intentions))
    }

    /// `inbound`'s configuration.
    pub fn inbound_toml(&self, app: SocketAddr, intentions: &str) -> String {
        format!(
            "{}\npublic_listener = \"127.0.0.1:0\"\nlocal_service_address = \"{app}\"\n{intentions}\n",
            self.header()
        )
    }
}

/// A mesh client of `target` built by hand, for what sidegate's own `client_config` never
/// does: it trusts the fixtures' roots and requires exactly `target`'s SPIFFE ID like an
/// upstream, but speaks only `versions` and presents `leaf`'s certificate, or none at all.
pub fn mesh_client(
    target: Service,
    versions: &[&'static SupportedProtocolVersion],
    leaf: Option<Service>,
) -> Arc<ClientConfig> {
    let provider = crate::common::provider();
    let mut roots = rustls::RootCertStore::empty();
    for root in target.identity().roots {
        roots.add(root).unwrap();
    }
    let verifier = SpiffeServerVerifier::new(
        Arc::new(roots),
        target.spiffe_id().to_string(),
        provider.signature_verification_algorithms,
    );
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match leaf.map(|s| s.identity()) {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Starts sidegate from a configuration naming fixed local ports (`local_bind_port` cannot
/// be 0): `config` gives a text with ports it just found free, and extra data for the test.
/// A free port can still be taken before sidegate binds it (as the local end of any test's
/// outgoing connection), so on "address in use" the text is made again with other ports.
pub fn start_on_free_ports<T>(config: impl Fn() -> (String, T)) -> (Running, String, T) {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let (toml, extra) = config();
        let parsed = sidegate::config::parse(&toml).unwrap_or_else(|e| panic!("config: {e:?}"));
        let threads = parsed
            .operations
            .threads
            .unwrap_or_else(crate::common::test_threads);
        match sidegate::proxy::start_on(sidegate::mesh::plan(&parsed.snapshot), threads) {
            Ok(running) => return (running, toml, extra),
            Err(e) if e.error.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free local ports in {ATTEMPTS} attempts")
}

/// `start_on_free_ports` for a `sidegate run` process: the configuration (which must have an
/// `[admin]` section) is written to `path`, and made again with other ports when the process
/// exits instead of serving. The process, its admin endpoint, the text and the extra data.
pub fn run_on_free_ports<T>(
    path: &std::path::Path,
    config: impl Fn() -> (String, T),
) -> (Child, SocketAddr, String, T) {
    const ATTEMPTS: usize = 5;
    let mut last = Vec::new();
    for _ in 0..ATTEMPTS {
        let (toml, extra) = config();
        std::fs::write(path, &toml).unwrap();
        let mut child = crate::common::run_binary(path, 0);
        match child.serving() {
            Some(admin) => return (child, admin, toml, extra),
            None => last = child.log.lock().unwrap().clone(),
        }
    }
    panic!(
        "{} did not serve in {ATTEMPTS} attempts: {last:#?}",
        path.display()
    )
}

/// One `[[sidecar.upstreams]]` entry of web's sidecar for `db` (partition part2): its bind
/// line(s) and any further keys, e.g. `mesh_gateway = { mode = "local" }`.
pub fn db_upstream(bind: &str, extra: &str) -> String {
    format!(
        "[[sidecar.upstreams]]\ndestination_name = \"db\"\ndestination_partition = \"part2\"\n{bind}\n{extra}\n"
    )
}
