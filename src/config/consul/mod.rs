//! `[consul]`: the agent to follow instead of the file's mesh sections. With it the file
//! carries no `[mesh]`, `[tls]`, `[sidecar]`, `[config_entries]` or `[catalog]` (all come
//! from the agent), and `[gateway]` is optional: its knobs apply, its `listen` (if given)
//! replaces the registration's addresses.

use std::path::Path;

use super::fields::Fields;
use super::sections::name_ok;
pub mod environment;
pub mod settings;

pub use settings::{resolve, FileKeys, Settings};

/// Sections the agent fills, and what to do instead of writing them.
const FROM_THE_AGENT: [(&str, &str); 5] = [
    (
        "mesh",
        "datacenter, partition and trust domain come from the agent",
    ),
    ("tls", "the leaf and roots come from the agent"),
    (
        "sidecar",
        "the sidecar comes from its registration (sidecar_service_id or sidecar_for)",
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
        sidecar_for: t
            .str("sidecar_for")
            .filter(|v| name_ok(t, "sidecar_for", v))
            .map(str::to_owned),
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
    let token_file = keys.token_file.clone().or_else(|| {
        env("CONSUL_HTTP_TOKEN_FILE")
            .filter(|p| !p.trim().is_empty())
            .map(std::path::PathBuf::from)
    });
    match resolve(keys, env) {
        Ok(s) => {
            if !s.verify {
                t.warn(
                    "address",
                    "CONSUL_HTTP_SSL_VERIFY=false: the agent's certificate is NOT verified; whoever is on the path to the agent can read the ACL token",
                );
            }
            if let Some(path) = token_file.filter(|_| s.token.is_some()) {
                super::tls::warn_if_others_can_read(t, "token_file", &path);
            }
            Some(s)
        }
        Err(errors) => {
            for e in errors {
                if e.key.is_empty() {
                    t.error_here(e.message);
                } else {
                    t.error(e.key, e.message);
                }
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

#[cfg(test)]
mod tests {
    use crate::config::parse_with_env;

    fn errors(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match parse_with_env(text, &lookup) {
            Ok(_) => Vec::new(),
            Err(errs) => errs.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_agent_replaces_the_file_sections() {
        let c = parse_with_env(
            "[consul]\nsidecar_service_id = \"web-sidecar-proxy\"\nstate_dir = \"state\"\n",
            &|_| None,
        )
        .unwrap();
        let s = c.consul.unwrap();
        assert_eq!(s.address.base(), "http://127.0.0.1:8500");
        assert_eq!(s.sidecar_service_id.as_deref(), Some("web-sidecar-proxy"));
        assert_eq!(
            s.state_dir.as_deref(),
            Some(std::path::Path::new("./state"))
        );
        assert!(c.snapshot.sidecar.is_none() && c.snapshot.gateway.is_none());

        // [gateway] keeps its knobs; listen may come from the registration.
        let c = parse_with_env(
            "[consul]\ngateway_service_id = \"mesh-gateway\"\n[gateway]\nmax_connections = 10\n",
            &|_| None,
        )
        .unwrap();
        let gw = c.snapshot.gateway.unwrap();
        assert!(gw.listen.is_empty());
        assert_eq!(gw.max_connections, 10);
    }

    #[test]
    fn every_problem_with_its_key_path() {
        let text = "[consul]\nadress = \"x:1\"\ntoken = \"t\"\nsidecar_service_id = \"\"\n\
                    mesh_gateway_service = \"a.b\"\n[mesh]\ndatacenter = \"dc1\"\n[tls]\n\
                    [sidecar]\nservice = \"web\"\n[gateway]\nlisten = [\"0.0.0.0:1\"]\n";
        let got = errors(text, &[]);
        let want = [
            "consul.adress: unknown key (did you mean `address`?)",
            "consul.token: is not read from the configuration",
            "consul.sidecar_service_id: is empty",
            "consul.mesh_gateway_service: \"a.b\" is not a valid name",
            "consul.sidecar_service_id: with [consul], name what to follow",
            "mesh: is not read with [consul]",
            "tls: is not read with [consul]",
            "sidecar: is not read with [consul]: the sidecar comes from its registration",
        ];
        for w in want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "missing {w:?} in {got:#?}"
            );
        }
        // The gateway is refused only once settings are valid; here they are not.
        let got = errors(
            "[consul]\nsidecar_service_id = \"w\"\n[gateway]\nlisten = [\"0.0.0.0:1\"]\n",
            &[],
        );
        assert_eq!(
            got,
            ["gateway: with [consul], the gateway follows its registration: set consul.gateway_service_id"]
        );
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let got = errors(
            "[consul]\nsidecar_service_id = \"w\"\n",
            &[
                ("CONSUL_HTTP_ADDR", "unix://run/consul.sock"),
                ("CONSUL_HTTP_TOKEN_FILE", "/nonexistent"),
            ],
        );
        assert!(
            got[0].starts_with("consul.address: ") && got[0].contains("(from CONSUL_HTTP_ADDR)"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("consul.token_file: cannot read the token file /nonexistent"),
            "{got:?}"
        );
    }

    /// A bad token in the environment is not `consul.token_file`'s fault (none is set): it
    /// is the section's, named by its variable, and its value is never shown.
    #[test]
    fn a_bad_environment_token_is_not_blamed_on_token_file() {
        let got = errors(
            "[consul]\nsidecar_service_id = \"w\"\n",
            &[("CONSUL_HTTP_TOKEN", "s3cr3t with-space")],
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("consul: the token from CONSUL_HTTP_TOKEN holds spaces"),
            "{got:?}"
        );
        assert!(!got[0].contains("s3cr3t"), "token leaked: {got:?}");
    }

    /// A state_dir another user could write to is refused at `consul.state_dir`; one that does
    /// not exist yet is fine (the first save makes it 0700).
    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sidegate-open-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let text = |d: &std::path::Path| {
            format!(
                "[consul]\nsidecar_service_id = \"w\"\nstate_dir = \"{}\"\n",
                d.display()
            )
        };
        let got = errors(&text(&dir), &[]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("consul.state_dir: ")
                && got[0].contains("writable by group or others"),
            "{got:?}"
        );
        assert!(errors(&text(&dir.join("not-yet")), &[]).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A token file others can read is a warning (the file stays valid); 0600 is silent.
    #[test]
    fn a_token_file_others_can_read_is_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sidegate-token-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "s3cr3t\n").unwrap();
        let text = format!(
            "[consul]\nsidecar_service_id = \"w\"\ntoken_file = \"{}\"\n",
            token.display()
        );
        for (mode, warned) in [(0o644, true), (0o600, false)] {
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
            let c = parse_with_env(&text, &|_| None).unwrap();
            assert_eq!(
                c.warnings
                    .iter()
                    .any(|w| w.starts_with("consul.token_file: ")
                        && w.contains("readable by group or others")),
                warned,
                "{mode:o}: {:?}",
                c.warnings
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
