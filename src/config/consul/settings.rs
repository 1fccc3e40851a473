//! How to reach the local Consul agent and what to follow there: `[consul]` over the usual
//! environment defaults (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_SSL`, `CONSUL_HTTP_TOKEN`,
//! `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_CACERT`, `CONSUL_CAPATH`, `CONSUL_HTTP_SSL_VERIFY`,
//! `CONSUL_TLS_SERVER_NAME`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`), as Consul's own CLI
//! reads them.
//!
//! Precedence, highest first: the file's key, the environment, the built-in default. Between
//! the two token sources Consul's rule holds: a token file wins over a token value.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::environment::{self, ClientCert};

/// Consul's default HTTP address.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";
/// The service name `consul connect envoy -gateway=mesh -register` uses.
pub const DEFAULT_MESH_GATEWAY_SERVICE: &str = "mesh-gateway";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub address: AgentAddress,
    pub token: Option<Token>,
    /// Roots trusted for the agent's HTTPS certificate (`ca_file` / `CONSUL_CACERT`).
    pub ca: Vec<CertificateDer<'static>>,
    /// `CONSUL_HTTP_SSL_VERIFY=false`: the agent's certificate is not verified at all.
    pub verify: bool,
    /// `CONSUL_TLS_SERVER_NAME`: the name the agent's certificate is verified for (and sent
    /// as SNI) instead of the address's host.
    pub tls_server_name: Option<String>,
    /// `CONSUL_CLIENT_CERT`/`CONSUL_CLIENT_KEY`, for an agent that verifies incoming HTTPS.
    pub client_cert: Option<ClientCert>,
    pub sidecar_service_id: Option<String>,
    /// `sidecar_for`: the service whose sidecar registration this is, as Consul's
    /// `-sidecar-for`; found on the agent (`consul::preflight`) before following, which
    /// then fills `sidecar_service_id`.
    pub sidecar_for: Option<String>,
    pub gateway_service_id: Option<String>,
    /// The service name mesh gateways are registered under in every datacenter.
    pub mesh_gateway_service: String,
    pub state_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    /// HTTP over the Unix socket at `authority` (an absolute path).
    Unix,
}

/// Why an agent address is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressError {
    pub given: String,
    pub why: AddressProblem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressProblem {
    Unix,
    Scheme,
    NoHost,
    /// A path, query, fragment, user or white space.
    NotHostPort,
    NoPort,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given = &self.given;
        match self.why {
            AddressProblem::Unix => write!(
                f,
                "{given:?}: a Unix socket needs an absolute path, e.g. unix:///run/consul/http.sock"
            ),
            AddressProblem::Scheme => write!(f, "{given:?}: the scheme must be http or https"),
            AddressProblem::NoHost => write!(f, "{given:?} has no host"),
            AddressProblem::NotHostPort => write!(
                f,
                "{given:?} must be only a host and port, e.g. 127.0.0.1:8500 (no path or user)"
            ),
            AddressProblem::NoPort => write!(
                f,
                "{given:?} has no port (write host:port, e.g. 127.0.0.1:8500)"
            ),
        }
    }
}

impl std::error::Error for AddressError {}

/// The agent's HTTP(S) address: scheme and `host:port`, nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentAddress {
    pub scheme: Scheme,
    pub authority: String,
}

impl AgentAddress {
    /// `host:port`, `http://host[:port]` or `https://host[:port]`. `ssl` is `CONSUL_HTTP_SSL`,
    /// which turns a bare `host:port` into HTTPS as it does for Consul's CLI.
    pub fn parse(s: &str, ssl: bool) -> Result<AgentAddress, AddressError> {
        let bad = |why| AddressError {
            given: s.to_owned(),
            why,
        };
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "http" => (Scheme::Http, rest),
                "https" => (Scheme::Https, rest),
                "unix" if rest.starts_with('/') && !rest.contains(['?', '#']) => {
                    return Ok(AgentAddress {
                        scheme: Scheme::Unix,
                        authority: rest.to_owned(),
                    })
                }
                "unix" => return Err(bad(AddressProblem::Unix)),
                _ => return Err(bad(AddressProblem::Scheme)),
            },
            None if ssl => (Scheme::Https, s),
            None => (Scheme::Http, s),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(bad(AddressProblem::NoHost));
        }
        if authority.contains(['/', '?', '#', '@']) || authority.chars().any(char::is_whitespace) {
            return Err(bad(AddressProblem::NotHostPort));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.ends_with(':') && port.parse::<u16>().is_ok());
        if !has_port && !s.contains("://") {
            return Err(bad(AddressProblem::NoPort));
        }
        Ok(AgentAddress {
            scheme,
            authority: authority.to_owned(),
        })
    }

    /// `scheme://authority`, the prefix of every request URL (`unix://` with the socket's
    /// path, shown as Consul writes it; requests go to `http://localhost` over the socket).
    pub fn base(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Unix => "unix",
        };
        format!("{scheme}://{}", self.authority)
    }
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base())
    }
}

/// An ACL token. It has no `Display`, and `Debug` never shows it: it must not reach logs,
/// errors or `/config`. Only the HTTP client reads it, through `expose`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token as read from a file or the environment: surrounding whitespace is dropped
    /// (files end in a newline); empty means "none"; anything that could not travel in an
    /// HTTP header is refused, naming the source but never the value.
    pub fn new(raw: &str, source: &str) -> Result<Option<Token>, TokenError> {
        let t = raw.trim();
        if t.is_empty() {
            return Ok(None);
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotOneWord {
                from: source.to_owned(),
            });
        }
        Ok(Some(Token(t.to_owned())))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why no token could be read. It names where the token came from, never the value.
#[derive(Debug)]
pub enum TokenError {
    /// Not one word; `from` names the source (a variable, or a key and its file).
    NotOneWord {
        from: String,
    },
    Unreadable(PathBuf, std::io::Error),
    EmptyFile(PathBuf),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::NotOneWord { from } => write!(
                f,
                "the token from {from} holds spaces or control characters; an ACL token is one word"
            ),
            TokenError::Unreadable(path, e) => {
                write!(f, "cannot read the token file {}: {e}", path.display())
            }
            TokenError::EmptyFile(path) => write!(f, "the token file {} is empty", path.display()),
        }
    }
}

impl std::error::Error for TokenError {}

/// What the file's `[consul]` section says; `None` where it says nothing. Paths are already
/// relative to the configuration file's directory.
#[derive(Debug, Default)]
pub struct FileKeys {
    pub address: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub sidecar_service_id: Option<String>,
    pub sidecar_for: Option<String>,
    pub gateway_service_id: Option<String>,
    pub mesh_gateway_service: Option<String>,
    pub state_dir: Option<PathBuf>,
}

/// A problem with one setting: the file key it belongs to (`address`, `token_file`, ...) and
/// what is wrong, naming the environment variable when the value came from there.
#[derive(Debug, PartialEq, Eq)]
pub struct SettingError {
    /// The `[consul]` key at fault; empty for the section as a whole (an environment variable
    /// that no key names).
    pub key: &'static str,
    pub message: String,
}

/// `[consul] state_dir`, else the directory systemd made for the unit (`StateDirectory=`):
/// systemd names it in STATE_DIRECTORY, colon-separated when a unit has several, of which
/// the first is ours. So the packaged unit keeps its last-known-good state with no line in
/// the file, and a template instance keeps its own. A directory that is not there yet is made
/// 0700 by the first save; one that is there must be ours alone (see `files::check_dir`).
fn state_dir(
    configured: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<PathBuf>, StateDirError> {
    let (dir, from_env) = match (configured, env("STATE_DIRECTORY")) {
        (Some(dir), _) => (dir, false),
        (None, Some(dirs)) => {
            let first = PathBuf::from(dirs.split(':').next().unwrap_or_default());
            if !first.is_absolute() {
                return Err(StateDirError::NotAbsolute(dirs));
            }
            (first, true)
        }
        (None, None) => return Ok(None),
    };
    match crate::config::files::check_dir(&dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(StateDirError::Unsafe { error, from_env })
        }
        _ => Ok(Some(dir)),
    }
}

/// Why a state directory cannot be used.
#[derive(Debug)]
enum StateDirError {
    /// STATE_DIRECTORY's first entry is not an absolute path.
    NotAbsolute(String),
    /// Not a directory, or one another user controls.
    Unsafe {
        error: std::io::Error,
        from_env: bool,
    },
}

impl fmt::Display for StateDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateDirError::NotAbsolute(dirs) => write!(
                f,
                "STATE_DIRECTORY={dirs:?} does not start with an absolute path"
            ),
            StateDirError::Unsafe { error, from_env } => {
                let from = if *from_env {
                    " (from STATE_DIRECTORY)"
                } else {
                    ""
                };
                write!(f, "{error}{from}")
            }
        }
    }
}

/// Fills what the file leaves out from the environment (`env` looks a variable up), then
/// from the defaults; reads the token and CA files. Every problem is returned.
pub fn resolve(
    file: FileKeys,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, Vec<SettingError>> {
    let mut errors = Vec::new();
    let mut fail = |key: &'static str, message: String| errors.push(SettingError { key, message });
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());

    // Go's ParseBool, as Consul's CLI: "True" and "t" mean HTTPS too, and a value it would
    // refuse is an error here, not plain HTTP.
    let mut flag = |name: &'static str, default: bool| {
        environment::bool_var(name, env(name))
            .map_err(|e| fail("", e.0))
            .ok()
            .flatten()
            .unwrap_or(default)
    };
    let (ssl, verify) = (
        flag("CONSUL_HTTP_SSL", false),
        flag("CONSUL_HTTP_SSL_VERIFY", true),
    );
    let (address_text, from) = match (&file.address, env("CONSUL_HTTP_ADDR")) {
        (Some(a), _) => (a.clone(), String::new()),
        (None, Some(a)) => (a, " (from CONSUL_HTTP_ADDR)".to_owned()),
        (None, None) => (DEFAULT_ADDRESS.to_owned(), String::new()),
    };
    let address = AgentAddress::parse(address_text.trim(), ssl)
        .map_err(|e| fail("address", format!("{e}{from}")))
        .ok();

    // A token given in the environment is no file: its error is the section's (key ""), not
    // `consul.token_file`'s, which would send the operator looking for a key they never set.
    let token = match (&file.token_file, env("CONSUL_HTTP_TOKEN_FILE")) {
        (Some(path), _) => token_from_file(path, "token_file").map_err(|e| ("token_file", e)),
        (None, Some(path)) => token_from_file(Path::new(&path), "CONSUL_HTTP_TOKEN_FILE")
            .map_err(|e| ("token_file", e)),
        (None, None) => env("CONSUL_HTTP_TOKEN")
            .map_or(Ok(None), |t| Token::new(&t, "CONSUL_HTTP_TOKEN"))
            .map_err(|e| ("", e)),
    }
    .map_err(|(key, e)| fail(key, e.to_string()))
    .ok();

    // The CA only verifies HTTPS. CONSUL_CACERT is often exported fleet-wide, also where
    // an agent is reached over plain HTTP, and Consul's CLI does not refuse that pair: the
    // variable is then ignored, not even read. A `ca_file` in this file is a statement
    // about this agent, though: next to a plain-HTTP address it most likely means the
    // address lost its https:// — the token would travel in clear text while the operator
    // believes the agent verified — so that stays an error.
    let plain_http = address.as_ref().is_some_and(|a| a.scheme != Scheme::Https);
    let ca = match (&file.ca_file, env("CONSUL_CACERT")) {
        (Some(path), _) => ca_from_file(path, ""),
        (None, Some(path)) if plain_http => {
            crate::debug!(
                "consul: CONSUL_CACERT ({path}) is not used: the agent address is plain HTTP"
            );
            Ok(Vec::new())
        }
        (None, Some(path)) => ca_from_file(Path::new(&path), " (from CONSUL_CACERT)"),
        (None, None) => Ok(Vec::new()),
    }
    .map_err(|e| fail("ca_file", e.to_string()))
    .ok();
    if let (Some(a), Some(ca)) = (&address, &ca) {
        if a.scheme != Scheme::Https && !ca.is_empty() {
            fail(
                "ca_file",
                format!("is set but the agent address {a} is plain HTTP; use https://"),
            );
        }
    }
    let https = !plain_http && address.is_some();
    let (ca, client_cert, tls_server_name) = https_from_env(&env, https, ca, &mut fail);

    let state_dir = state_dir(file.state_dir.clone(), &env)
        .map_err(|e| fail("state_dir", e.to_string()))
        .ok()
        .flatten();
    check_targets(&file, &mut fail);
    match (address, token, ca) {
        (Some(address), Some(token), Some(ca)) if errors.is_empty() => Ok(Settings {
            address,
            token,
            ca,
            verify,
            tls_server_name,
            client_cert,
            sidecar_service_id: file.sidecar_service_id,
            sidecar_for: file.sidecar_for,
            gateway_service_id: file.gateway_service_id,
            mesh_gateway_service: file
                .mesh_gateway_service
                .unwrap_or_else(|| DEFAULT_MESH_GATEWAY_SERVICE.to_owned()),
            state_dir,
        }),
        _ => Err(errors),
    }
}

/// The rest of the agent's TLS settings, which come only from the environment and, like
/// CONSUL_CACERT, mean nothing to a plain-HTTP agent (Consul's CLI ignores them there).
/// CONSUL_CAPATH is read when no CA file was given.
#[allow(
    clippy::type_complexity,
    reason = "one private call site, which destructures it"
)]
fn https_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    https: bool,
    ca: Option<Vec<CertificateDer<'static>>>,
    fail: &mut dyn FnMut(&'static str, String),
) -> (
    Option<Vec<CertificateDer<'static>>>,
    Option<ClientCert>,
    Option<String>,
) {
    let ca = match (ca, env("CONSUL_CAPATH")) {
        (Some(ca), Some(dir)) if ca.is_empty() && https => environment::ca_dir(Path::new(&dir))
            .map_err(|e| fail("", e.0))
            .ok(),
        (ca, _) => ca,
    };
    let client_cert = if https {
        environment::client_cert(env("CONSUL_CLIENT_CERT"), env("CONSUL_CLIENT_KEY"))
            .map_err(|e| fail("", e.0))
            .ok()
            .flatten()
    } else {
        None
    };
    let tls_server_name = env("CONSUL_TLS_SERVER_NAME")
        .map(|n| n.trim().to_owned())
        .filter(|_| https);
    if let Some(name) = &tls_server_name {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            fail(
                "",
                format!("CONSUL_TLS_SERVER_NAME={name:?} is not a DNS name or IP address"),
            );
        }
    }
    (ca, client_cert, tls_server_name)
}

/// What to follow: one sidecar (by ID or by the service it is for) and/or a gateway.
fn check_targets(file: &FileKeys, fail: &mut dyn FnMut(&'static str, String)) {
    if file.sidecar_for.is_some() && file.sidecar_service_id.is_some() {
        fail(
            "sidecar_for",
            "and sidecar_service_id both name the sidecar; keep one".to_owned(),
        );
    }
    if file.sidecar_service_id.is_none()
        && file.sidecar_for.is_none()
        && file.gateway_service_id.is_none()
    {
        fail(
            "sidecar_service_id",
            "with [consul], name what to follow: sidecar_service_id (a connect-proxy registration) or sidecar_for (the service it is for), and/or gateway_service_id (a mesh-gateway registration)".to_owned(),
        );
    }
}

fn token_from_file(path: &Path, source: &str) -> Result<Option<Token>, TokenError> {
    let text = crate::config::files::read_to_string(path)
        .map_err(|e| TokenError::Unreadable(path.to_owned(), e))?;
    let token = Token::new(&text, &format!("{source} {}", path.display()))?;
    if token.is_none() {
        return Err(TokenError::EmptyFile(path.to_owned()));
    }
    Ok(token)
}

/// Why the agent's CA file gives no certificates. `from` names the environment variable it
/// came from, if any.
#[derive(Debug)]
enum CaFileError {
    Read(PathBuf, &'static str, std::io::Error),
    NotPem(PathBuf, &'static str, rustls::pki_types::pem::Error),
    NoCertificate(PathBuf, &'static str),
}

impl fmt::Display for CaFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaFileError::Read(path, from, e) => {
                write!(f, "cannot read {}{from}: {e}", path.display())
            }
            CaFileError::NotPem(path, from, e) => {
                write!(f, "{}{from} is not PEM: {e}", path.display())
            }
            CaFileError::NoCertificate(path, from) => {
                write!(f, "{}{from} holds no CERTIFICATE block", path.display())
            }
        }
    }
}

fn ca_from_file(
    path: &Path,
    from: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let pem = crate::config::files::read(path)
        .map_err(|e| CaFileError::Read(path.to_owned(), from, e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CaFileError::NotPem(path.to_owned(), from, e))?;
    if certs.is_empty() {
        return Err(CaFileError::NoCertificate(path.to_owned(), from));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn sidecar() -> FileKeys {
        FileKeys {
            sidecar_service_id: Some("web-sidecar-proxy".into()),
            ..FileKeys::default()
        }
    }

    fn tmp(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sidegate-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn addresses_in_every_form() {
        let ok = [
            ("127.0.0.1:8500", false, "http://127.0.0.1:8500"),
            ("127.0.0.1:8501", true, "https://127.0.0.1:8501"),
            ("http://localhost:8500/", false, "http://localhost:8500"),
            ("HTTPS://consul.local", false, "https://consul.local"),
            ("[::1]:8500", false, "http://[::1]:8500"),
        ];
        for (s, ssl, want) in ok {
            assert_eq!(AgentAddress::parse(s, ssl).unwrap().base(), want, "{s}");
        }
        let unix = AgentAddress::parse("unix:///var/run/consul.sock", false).unwrap();
        assert_eq!(unix.scheme, Scheme::Unix);
        assert_eq!(unix.authority, "/var/run/consul.sock");
        assert_eq!(unix.base(), "unix:///var/run/consul.sock");
        for (s, why) in [
            ("unix://consul.sock", "absolute path"),
            ("ftp://x:1", "scheme"),
            ("localhost", "no port"),
            ("http://x:1/v1", "no path"),
            ("http://user@x:1", "no path or user"),
            ("http://", "no host"),
        ] {
            let err = AgentAddress::parse(s, false).unwrap_err().to_string();
            assert!(err.contains(why), "{s}: {err}");
        }
    }

    #[test]
    fn file_beats_environment_beats_default() {
        let s = resolve(sidecar(), &env_of(&[])).unwrap();
        assert_eq!(s.address.base(), "http://127.0.0.1:8500");
        assert_eq!(s.token, None);
        assert_eq!(s.mesh_gateway_service, "mesh-gateway");

        let env = env_of(&[
            ("CONSUL_HTTP_ADDR", "10.0.0.1:8501"),
            ("CONSUL_HTTP_SSL", "true"),
            ("CONSUL_HTTP_TOKEN", "env-token"),
        ]);
        let s = resolve(sidecar(), &env).unwrap();
        assert_eq!(s.address.base(), "https://10.0.0.1:8501");
        assert_eq!(s.token, Token::new("env-token", "t").unwrap());

        let file_token = tmp("file.token", "file-token\n");
        let keys = FileKeys {
            address: Some("http://127.0.0.2:8500".into()),
            token_file: Some(file_token),
            ..sidecar()
        };
        let s = resolve(keys, &env).unwrap();
        assert_eq!(
            s.address.base(),
            "http://127.0.0.2:8500",
            "file address wins"
        );
        assert_eq!(s.token, Token::new("file-token", "t").unwrap());

        // Consul's rule: a token file wins over a token value, also in the environment.
        let env_file = tmp("env.token", "  env-file-token  ");
        let env = env_of(&[
            ("CONSUL_HTTP_TOKEN", "env-token"),
            ("CONSUL_HTTP_TOKEN_FILE", env_file.to_str().unwrap()),
        ]);
        let s = resolve(sidecar(), &env).unwrap();
        assert_eq!(s.token, Token::new("env-file-token", "t").unwrap());
    }

    /// systemd's StateDirectory= is the default state_dir; the file's key still wins.
    #[test]
    fn state_dir_defaults_to_the_units_state_directory() {
        let none = resolve(sidecar(), &env_of(&[])).unwrap();
        assert_eq!(none.state_dir, None, "no key, no systemd: no saved state");

        let scratch = tmp("state-dirs", "").with_extension("d");
        let unit_dir = scratch.join("unit");
        std::fs::create_dir_all(&unit_dir).unwrap();
        let dirs = format!("{}:/var/lib/other", unit_dir.display());
        let env = env_of(&[("STATE_DIRECTORY", &dirs)]);
        let s = resolve(sidecar(), &env).unwrap();
        assert_eq!(
            s.state_dir.as_deref(),
            Some(unit_dir.as_path()),
            "the first one"
        );

        let keys = FileKeys {
            state_dir: Some("/srv/sidegate".into()),
            ..sidecar()
        };
        let s = resolve(keys, &env).unwrap();
        assert_eq!(s.state_dir.as_deref(), Some(Path::new("/srv/sidegate")));

        let errors = resolve(sidecar(), &env_of(&[("STATE_DIRECTORY", "state")])).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "state_dir");
        assert!(errors[0].message.contains("absolute"), "{errors:?}");

        // A directory from systemd is held to the same rule as one from the file.
        let open = scratch.join("open");
        std::fs::create_dir_all(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let env = env_of(&[("STATE_DIRECTORY", open.to_str().unwrap())]);
        let errors = resolve(sidecar(), &env).unwrap_err();
        assert!(
            errors[0].message.contains("writable by group or others")
                && errors[0].message.ends_with("(from STATE_DIRECTORY)"),
            "{errors:?}"
        );
    }

    #[test]
    fn bad_settings_name_their_key_and_source() {
        let env = env_of(&[
            ("CONSUL_HTTP_ADDR", "unix://tmp/c.sock"),
            ("CONSUL_CACERT", "/nonexistent/ca.pem"),
            ("CONSUL_HTTP_TOKEN", "two words"),
        ]);
        let errors = resolve(FileKeys::default(), &env).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key).collect();
        // The token from the environment is the section's error: no token_file was set.
        assert_eq!(keys, ["address", "", "ca_file", "sidecar_service_id"]);
        assert!(errors[0].message.contains("CONSUL_HTTP_ADDR"), "{errors:?}");
        assert!(
            errors[1].message.contains("CONSUL_HTTP_TOKEN"),
            "{errors:?}"
        );
        assert!(!errors[1].message.contains("two words"), "token leaked");
        assert!(errors[2].message.contains("CONSUL_CACERT"), "{errors:?}");

        let empty = tmp("empty.token", "\n");
        let keys = FileKeys {
            token_file: Some(empty),
            ..sidecar()
        };
        let errors = resolve(keys, &env_of(&[])).unwrap_err();
        assert!(errors[0].message.contains("is empty"), "{errors:?}");

        let not_pem = tmp("ca.txt", "hello");
        let keys = FileKeys {
            address: Some("https://127.0.0.1:8501".into()),
            ca_file: Some(not_pem),
            ..sidecar()
        };
        let errors = resolve(keys, &env_of(&[])).unwrap_err();
        assert!(errors[0].message.contains("no CERTIFICATE"), "{errors:?}");
    }

    /// CONSUL_CACERT only matters for HTTPS: next to a plain-HTTP address (the default one
    /// included) it is ignored, even when unreadable; a `ca_file` in the file is not.
    #[test]
    fn a_ca_from_the_environment_is_ignored_for_plain_http() {
        let ca = format!("{}/tests/fixtures/tls/ca.pem", env!("CARGO_MANIFEST_DIR"));
        for cacert in [ca.as_str(), "/nonexistent/ca.pem"] {
            for addr in [None, Some("http://127.0.0.1:8500"), Some("127.0.0.1:8500")] {
                let mut vars = vec![("CONSUL_CACERT", cacert)];
                vars.extend(addr.map(|a| ("CONSUL_HTTP_ADDR", a)));
                let s = resolve(sidecar(), &env_of(&vars))
                    .unwrap_or_else(|e| panic!("{cacert} with {addr:?}: {e:?}"));
                assert!(s.ca.is_empty(), "{cacert} with {addr:?}");
            }
        }
        // HTTPS: read, and used.
        let env = env_of(&[
            ("CONSUL_CACERT", &ca),
            ("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501"),
        ]);
        assert_eq!(resolve(sidecar(), &env).unwrap().ca.len(), 1);
        let env = env_of(&[
            ("CONSUL_CACERT", "/nonexistent/ca.pem"),
            ("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501"),
        ]);
        let errors = resolve(sidecar(), &env).unwrap_err();
        assert!(errors[0].message.contains("CONSUL_CACERT"), "{errors:?}");
        // Written in the file next to plain HTTP: a mistake worth stopping for.
        let keys = FileKeys {
            ca_file: Some(ca.into()),
            ..sidecar()
        };
        let errors = resolve(keys, &env_of(&[])).unwrap_err();
        assert_eq!(errors[0].key, "ca_file");
        assert!(errors[0].message.contains("plain HTTP"), "{errors:?}");
    }

    /// Consul's CLI reads CONSUL_HTTP_SSL with Go's ParseBool: "True" and "t" are HTTPS, and
    /// what it refuses is an error naming the variable, never plain HTTP in silence.
    #[test]
    fn ssl_is_a_go_boolean() {
        for (v, scheme) in [
            ("True", Scheme::Https),
            ("t", Scheme::Https),
            ("1", Scheme::Https),
        ]
        .into_iter()
        .chain([("F", Scheme::Http), ("false", Scheme::Http)])
        {
            let env = env_of(&[
                ("CONSUL_HTTP_SSL", v),
                ("CONSUL_HTTP_ADDR", "10.0.0.1:8501"),
            ]);
            assert_eq!(
                resolve(sidecar(), &env).unwrap().address.scheme,
                scheme,
                "{v}"
            );
        }
        let env = env_of(&[("CONSUL_HTTP_SSL", "yes")]);
        let errors = resolve(sidecar(), &env).unwrap_err();
        assert!(
            errors[0].message.starts_with("CONSUL_HTTP_SSL=\"yes\""),
            "{errors:?}"
        );
    }

    #[test]
    fn the_agents_tls_from_the_environment() {
        let fixture = |n: &str| format!("{}/tests/fixtures/tls/{n}", env!("CARGO_MANIFEST_DIR"));
        let (cert, key) = (fixture("web.pem"), fixture("web-key-sec1.pem"));
        let dir = std::env::temp_dir().join(format!("sidegate-env-capath-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixture("ca.pem"), dir.join("ca.pem")).unwrap();
        let vars = [
            ("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501"),
            ("CONSUL_HTTP_SSL_VERIFY", "False"),
            ("CONSUL_TLS_SERVER_NAME", "consul.example"),
            ("CONSUL_CLIENT_CERT", cert.as_str()),
            ("CONSUL_CLIENT_KEY", key.as_str()),
            ("CONSUL_CAPATH", dir.to_str().unwrap()),
        ];
        let s = resolve(sidecar(), &env_of(&vars)).unwrap();
        assert!(!s.verify);
        assert_eq!(s.tls_server_name.as_deref(), Some("consul.example"));
        assert_eq!(s.client_cert.unwrap().chain.len(), 1);
        assert_eq!(s.ca.len(), 1, "from CONSUL_CAPATH");
        // Defaults: verified, no name, no client certificate.
        let s = resolve(sidecar(), &env_of(&vars[..1])).unwrap();
        assert!(s.verify && s.tls_server_name.is_none() && s.client_cert.is_none());
        // Plain HTTP: all of them ignored, as Consul's CLI does.
        let mut plain = vars;
        plain[0] = ("CONSUL_HTTP_ADDR", "127.0.0.1:8500");
        plain[3] = ("CONSUL_CLIENT_CERT", "/nonexistent");
        let s = resolve(sidecar(), &env_of(&plain)).unwrap();
        assert!(s.client_cert.is_none() && s.tls_server_name.is_none() && s.ca.is_empty());
        // Errors name their variable.
        let mut bad = vars;
        bad[1] = ("CONSUL_HTTP_SSL_VERIFY", "no");
        bad[2] = ("CONSUL_TLS_SERVER_NAME", "not a name");
        bad[4] = ("CONSUL_CLIENT_KEY", "/nonexistent");
        let errors = resolve(sidecar(), &env_of(&bad)).unwrap_err();
        let all = format!("{errors:?}");
        for name in [
            "CONSUL_HTTP_SSL_VERIFY",
            "CONSUL_TLS_SERVER_NAME",
            "CONSUL_CLIENT_KEY",
        ] {
            assert!(all.contains(name), "{name} in {all}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sidecar_for_is_one_way_to_name_the_sidecar() {
        let keys = |id: Option<&str>, web: Option<&str>| FileKeys {
            sidecar_service_id: id.map(Into::into),
            sidecar_for: web.map(Into::into),
            ..FileKeys::default()
        };
        let s = resolve(keys(None, Some("web")), &env_of(&[])).unwrap();
        assert_eq!(s.sidecar_for.as_deref(), Some("web"));
        assert_eq!(s.sidecar_service_id, None);
        let errors =
            resolve(keys(Some("web-sidecar-proxy"), Some("web")), &env_of(&[])).unwrap_err();
        assert_eq!(errors[0].key, "sidecar_for", "{errors:?}");
        let errors = resolve(keys(None, None), &env_of(&[])).unwrap_err();
        assert!(errors[0].message.contains("sidecar_for"), "{errors:?}");
    }

    #[test]
    fn token_never_shows() {
        let token = Token::new("s3cr3t-7f1d", "test").unwrap().unwrap();
        let s = Settings {
            token: Some(token),
            ..resolve(sidecar(), &env_of(&[])).unwrap()
        };
        let shown = format!("{s:?} {s:#?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
