//! The configuration file: TOML in, a validated `Config` (or every problem in it) out.
//!
//! Every key is documented in `config/README.md`. Key names are Consul's own.

pub mod consul;
mod fields;
pub mod files;
mod operations;
mod resolvers;
mod sections;
mod sidecar;
mod tls;

use std::fmt;
use std::path::Path;

pub use fields::ConfigError;
use fields::{Errors, Fields};
pub use operations::Operations;
/// Go's duration syntax, as Consul writes and reads `ConnectTimeout` (the file and the agent).
pub use resolvers::go_duration;

use crate::mesh::config_entries::ConfigEntries;
use crate::mesh::snapshot::{Catalog, Snapshot};

/// A validated configuration: the file-source mesh state.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// With `consul`, only the file's knobs (`[gateway]`): `here` is empty and the agent
    /// fills the rest (`consul::follow`).
    pub snapshot: Snapshot,
    /// `[admin]`, `[shutdown]`, `[log]`.
    pub operations: Operations,
    /// `[consul]` over the environment's defaults: the mesh state comes from this agent.
    pub consul: Option<consul::Settings>,
    /// What is valid but unwise (a key file others can read), as `key.path: message`.
    pub warnings: Vec<String>,
}

/// Everything wrong with a file, or why it could not be read at all.
#[derive(Debug)]
pub enum LoadError {
    Read {
        path: String,
        error: std::io::Error,
    },
    Invalid {
        path: String,
        errors: Vec<ConfigError>,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, error } => write!(f, "cannot read {path}: {error}"),
            LoadError::Invalid { path, errors } => {
                let n = errors.len();
                write!(f, "{path}: {n} error{}", if n == 1 { "" } else { "s" })?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads and validates a configuration file. Files it names are relative to its directory.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let shown = path.display().to_string();
    let text = files::read_to_string(path).map_err(|error| LoadError::Read {
        path: shown.clone(),
        error,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_in(&text, base, &env_var).map_err(|errors| LoadError::Invalid {
        path: shown,
        errors,
    })
}

/// Validates configuration text, returning every problem found; files it names are relative
/// to the current directory.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    parse_in(text, Path::new("."), &env_var)
}

/// `parse` with the environment given (`[consul]` reads `CONSUL_HTTP_*` defaults from it).
pub fn parse_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    parse_in(text, Path::new("."), env)
}

/// A TOML syntax error as shown to the operator. The parser's own text quotes the offending
/// line, and a line that holds a token (`token = "s3cr3t...` left unterminated) would then end
/// up in the terminal, the journal and bug reports. In a file that mentions a token anywhere
/// — an unterminated string can run on over later lines, so the shown line need not be the
/// key's own — only the position and the parser's reason are shown.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let mentions_token = text.to_ascii_lowercase().contains("token");
    if !mentions_token {
        return e.to_string().trim_end().to_owned();
    }
    let reason = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {reason} (the line is not shown: this file holds a token)")
        }
        None => format!("{reason} (the line is not shown: this file holds a token)"),
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Validates configuration text whose file names (`[tls]`) are relative to `base`, as
/// `load` does for a file in `base`, reading the environment through `env`; the fuzzers call
/// it with the fixture directory and no environment.
pub fn parse_in(
    text: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        vec![ConfigError {
            path: String::new(),
            message: format!("not valid TOML: {}", toml_error(text, &e)),
        }]
    })?;
    let errs = Errors::default();
    let root = Fields::root(&table, &errs);
    let operations = operations::operations(&root);
    if table.contains_key("consul") {
        return from_agent(&table, &root, base, env, operations)
            .filter(|_| errs.is_empty())
            .map(|c| Config {
                warnings: errs.warnings(),
                ..c
            })
            .ok_or_else(|| errs.into_vec());
    }
    let here = sections::here(&root);
    let gateway = root
        .table("gateway")
        .and_then(|g| sections::gateway(&g, true));
    let sidecar = root
        .table("sidecar")
        .and_then(|s| sidecar::sidecar(&s, here.as_ref()));
    let config_entries = root
        .table("config_entries")
        .map_or(Some(ConfigEntries::file_default()), |c| {
            sidecar::config_entries(&c, here.as_ref())
        });
    let identity = root.table("tls").and_then(|t| tls::identity(&t, base));
    if table.contains_key("sidecar") && !table.contains_key("tls") {
        root.error("tls", "is required with [sidecar]: cert_file, key_file and ca_file of this service's identity");
    }
    if let (Some(id), Some(here), Some(sc)) = (&identity, &here, &sidecar) {
        identity_fits(&root, id, here, &sc.service);
    }
    if !table.contains_key("gateway") && !table.contains_key("sidecar") {
        root.error_here("nothing to run: add a [gateway] or [sidecar] section (see config/)");
    }
    let catalog = match root.table("catalog") {
        Some(c) => {
            let services = sections::services(&c, here.as_ref());
            let gateways = sections::gateways(&c, here.as_ref());
            let wan_federation = sections::wan_federation(&c);
            c.finish();
            Catalog {
                services,
                gateways,
                wan_federation,
            }
        }
        None => Catalog::default(),
    };
    if let (Some(entries), Some(here)) = (&config_entries, &here) {
        chains_compile(&root, entries, sidecar.as_ref(), here);
    }
    if let (Some(gw), Some(here)) = (&gateway, &here) {
        not_itself(&root, gw, &catalog, here);
    }
    root.finish();
    match (here, operations) {
        (Some(here), Some(operations)) if errs.is_empty() => Ok(Config {
            snapshot: Snapshot {
                here,
                identity,
                gateway,
                sidecar,
                config_entries: config_entries.unwrap_or_default(),
                catalog,
            },
            operations,
            consul: None,
            warnings: errs.warnings(),
        }),
        _ => Err(errs.into_vec()),
    }
}

/// `[consul]`: the agent's settings and the file's `[gateway]` knobs; nothing else.
fn from_agent(
    table: &toml::Table,
    root: &Fields<'_>,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    operations: Option<Operations>,
) -> Option<Config> {
    let settings = root
        .table("consul")
        .and_then(|c| consul::settings(&c, base, env));
    consul::refuse_file_sections(root, table);
    let gateway = root
        .table("gateway")
        .and_then(|g| sections::gateway(&g, false));
    if let (Some(_), Some(s)) = (&gateway, &settings) {
        if s.gateway_service_id.is_none() {
            root.error(
                "gateway",
                "with [consul], the gateway follows its registration: set consul.gateway_service_id",
            );
        }
    }
    root.finish();
    Some(Config {
        snapshot: Snapshot {
            here: crate::mesh::snapshot::Here {
                place: crate::mesh::Place::new("", ""),
                namespace: String::new(),
                trust_domain: String::new(),
            },
            identity: None,
            gateway,
            sidecar: None,
            config_entries: ConfigEntries::default(),
            catalog: Catalog::default(),
        },
        consul: Some(settings?),
        operations: operations?,
        warnings: Vec::new(),
    })
}

/// Every chain the file describes compiles as Consul would compile it: each resolver's own
/// service's, and each upstream's. A redirect loop or an undefined subset is refused here,
/// as Consul refuses to store such entries, rather than found by a connection.
fn chains_compile(
    root: &Fields<'_>,
    entries: &ConfigEntries,
    sidecar: Option<&crate::mesh::sidecar::SidecarSpec>,
    here: &crate::mesh::snapshot::Here,
) {
    use crate::mesh::chain::{compile, Target};
    let resolvers = &entries.service_resolvers;
    for r in resolvers.values() {
        let start = Target {
            service: r.name.clone(),
            subset: String::new(),
            namespace: r.namespace.clone(),
            partition: r.partition.clone(),
            datacenter: here.place.datacenter.clone(),
        };
        if let Err(e) = compile(resolvers, start, None) {
            root.error(
                &format!("config_entries.service_resolvers.{}", r.name),
                e.to_string(),
            );
        }
    }
    for (i, u) in sidecar.iter().flat_map(|s| s.upstreams.iter().enumerate()) {
        let start = Target {
            service: u.destination_name.clone(),
            subset: String::new(),
            namespace: u.destination_namespace.clone(),
            partition: u.place.partition.clone(),
            datacenter: u.place.datacenter.clone(),
        };
        if let Err(e) = compile(resolvers, start, u.connect_timeout) {
            root.error(
                &format!("sidecar.upstreams[{i}]"),
                format!("its discovery chain cannot be compiled: {e}"),
            );
        }
    }
}

/// A gateway never forwards to itself: another place's `wan` address that is one of this
/// gateway's own listen addresses would send every hello for that place back in, until the
/// connection limit is full.
fn not_itself(
    root: &Fields<'_>,
    gw: &crate::mesh::snapshot::GatewaySettings,
    catalog: &Catalog,
    here: &crate::mesh::snapshot::Here,
) {
    for (i, g) in catalog.gateways.iter().enumerate() {
        if g.place == here.place {
            continue;
        }
        for wan in &g.wan {
            let crate::mesh::Endpoint::Addr(addr) = wan else {
                continue;
            };
            let own = gw.listen.iter().any(|l| {
                l == addr
                    || (l.port() == addr.port()
                        && l.ip().is_unspecified()
                        && addr.ip().is_loopback())
            });
            if own {
                root.error(
                    &format!("catalog.gateways[{i}].wan"),
                    format!("{addr} is this gateway's own listen address: as the gateway of {} it would route to itself (is this entry for this host's own place? names are compared without regard to case)", g.place),
                );
            }
        }
    }
}

/// The leaf must be this sidecar's service in this mesh: Consul issues a sidecar the
/// destination service's identity, and peers check it exactly.
fn identity_fits(
    root: &Fields<'_>,
    id: &crate::tls::Identity,
    here: &crate::mesh::snapshot::Here,
    service: &str,
) {
    if let crate::names::SpiffeId::Service {
        trust_domain,
        service: svc,
        ..
    } = &id.spiffe_id
    {
        if !trust_domain.eq_ignore_ascii_case(&here.trust_domain) {
            root.error(
                "tls.cert_file",
                format!(
                    "leaf is {} but [mesh] trust_domain is {}",
                    id.spiffe_id, here.trust_domain
                ),
            );
        }
        if svc != service {
            root.error(
                "tls.cert_file",
                format!(
                    "leaf is {} but [sidecar] service is {service:?}",
                    id.spiffe_id
                ),
            );
        }
    }
}
