//! `[consul]`: the agent to follow instead of the file's mesh sections. With it the file
//! carries no `[mesh]`, `[tls]`, `[sidecar]`, `[config_entries]` or `[catalog]` (all come
//! from the agent), and `[gateway]` is optional: its knobs apply, its `listen` (if given)
//! replaces the registration's addresses.

use std::path::Path;

use super::fields::Fields;
use super::sections::name_ok;
use crate::consul::settings::{resolve, FileKeys, Settings};

/// Sections the agent fills, and what to do instead of writing them.
const FROM_THE_AGENT: [(&str, &str); 5] = [
    (
        "mesh",
        "datacenter, partition and trust domain come from the agent",
    ),
    ("tls", "the leaf and roots come from the agent"),
    (
        "sidecar",
        "the sidecar comes from its registration (sidecar_service_id)",
    ),
    ("config_entries", "config entries come from the agent"),
    (
        "catalog",
        "instances and gateways come from the agent's catalog",
    ),
];

pub fn settings(
    t: &Fields<'_>,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Settings> {
    let path = |key: &'static str| t.str(key).map(|p| base.join(p));
    let id = |key: &'static str| {
        t.str(key).filter(|v| {
            let ok = !v.trim().is_empty();
            if !ok {
                t.error(
                    key,
                    "is empty: give the service ID as registered with the agent",
                );
            }
            ok
        })
    };
    let keys = FileKeys {
        address: t.str("address").map(str::to_owned),
        token_file: path("token_file"),
        ca_file: path("ca_file"),
        sidecar_service_id: id("sidecar_service_id").map(str::to_owned),
        gateway_service_id: id("gateway_service_id").map(str::to_owned),
        mesh_gateway_service: t
            .str("mesh_gateway_service")
            .filter(|v| name_ok(t, "mesh_gateway_service", v))
            .map(str::to_owned),
        state_dir: path("state_dir"),
    };
    if t.str("token").is_some() {
        t.error(
            "token",
            "is not read from the configuration (it would show wherever the file does): put the token in a file and set token_file, or use CONSUL_HTTP_TOKEN",
        );
    }
    t.finish();
    match resolve(keys, env) {
        Ok(s) => Some(s),
        Err(errors) => {
            for e in errors {
                t.error(e.key, e.message);
            }
            None
        }
    }
}

/// Reports every section the agent fills instead.
pub fn refuse_file_sections(root: &Fields<'_>, table: &toml::Table) {
    for (section, why) in FROM_THE_AGENT {
        if table.contains_key(section) {
            let _ = root.table(section);
            root.error(
                section,
                format!("is not read with [consul]: {why}; remove this section"),
            );
        }
    }
}
