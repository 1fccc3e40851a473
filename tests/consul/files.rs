//! sidegate started in-process from files holding a Consul agent's certificates (the file
//! source), for tests that need Consul's real CA but not its watches.

use std::net::SocketAddr;

use sidegate::proxy::Running;

use super::{Agent, TlsFiles};
use crate::common::start;

/// `[sidecar.intentions]` letting only `web` in.
pub const ALLOW_WEB_ONLY: &str = "[sidecar.intentions]\ndefault = \"deny\"\n[[sidecar.intentions.rules]]\nsource = \"web\"\naction = \"allow\"\n";

/// `[mesh]` for a sidecar in `agent`'s datacenter and cluster (its trust domain), with
/// `files` as `[tls]`.
pub fn header(agent: &Agent, files: &TlsFiles) -> String {
    format!(
        "[mesh]\ndatacenter = \"{}\"\ntrust_domain = \"{}\"\n{}[sidecar]\nservice = \"{}\"\n",
        agent.options.datacenter,
        agent.roots().trust_domain,
        files.toml(),
        files.service
    )
}

/// A sidecar with only an inbound listener, to `app`, with these intentions.
pub fn inbound(agent: &Agent, files: &TlsFiles, app: SocketAddr, intentions: &str) -> Running {
    start(&format!(
        "{}public_listener = \"127.0.0.1:0\"\nlocal_service_address = \"{app}\"\n{intentions}",
        header(agent, files)
    ))
}

/// A sidecar with one upstream to `target` on 127.0.0.1:`port`, dialling `instance`
/// directly.
pub fn upstream(
    agent: &Agent,
    files: &TlsFiles,
    target: &str,
    port: u16,
    instance: SocketAddr,
) -> Running {
    start(&format!(
        "{}[[sidecar.upstreams]]\ndestination_name = \"{target}\"\nlocal_bind_port = {port}\n\
         mesh_gateway = {{ mode = \"none\" }}\n[[catalog.services]]\nname = \"{target}\"\ninstances = [\"{instance}\"]\n",
        header(agent, files)
    ))
}
