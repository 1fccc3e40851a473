//! The parts of Consul's environment conventions beyond the address, token and CA file:
//! booleans as Go's `strconv.ParseBool` reads them, `CONSUL_CAPATH`, and the client
//! certificate for an agent that verifies incoming HTTPS (`CONSUL_CLIENT_CERT`/`_KEY`).

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Why a variable's value cannot be used; it names the variable (and never a secret).
#[derive(Debug, PartialEq, Eq)]
pub struct EnvError(pub String);

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EnvError {}

/// Go's `strconv.ParseBool`, which Consul's CLI applies to `CONSUL_HTTP_SSL` and
/// `CONSUL_HTTP_SSL_VERIFY`: exactly these spellings, nothing else (no "yes", no "on").
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A boolean variable; the error names it (its value is no secret).
pub fn bool_var(name: &str, value: Option<String>) -> Result<Option<bool>, EnvError> {
    match value {
        None => Ok(None),
        Some(v) => parse_bool(v.trim()).map(Some).ok_or_else(|| {
            EnvError(format!(
                "{name}={v:?} is not a boolean as Consul reads it (1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)"
            ))
        }),
    }
}

/// The certificate and key sidegate shows an agent that verifies incoming HTTPS. The key is
/// kept as the PEM it was read as (checked to hold a key) and never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub chain: Vec<CertificateDer<'static>>,
    key_pem: Vec<u8>,
}

impl ClientCert {
    pub(crate) fn key_pem(&self) -> &[u8] {
        &self.key_pem
    }
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// `CONSUL_CLIENT_CERT` and `CONSUL_CLIENT_KEY`: both or neither.
pub fn client_cert(
    cert: Option<String>,
    key: Option<String>,
) -> Result<Option<ClientCert>, EnvError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (PathBuf::from(c), PathBuf::from(k)),
        (Some(_), None) => {
            return Err(EnvError(
                "CONSUL_CLIENT_CERT is set without CONSUL_CLIENT_KEY".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(EnvError(
                "CONSUL_CLIENT_KEY is set without CONSUL_CLIENT_CERT".into(),
            ))
        }
    };
    let chain =
        certificates(&cert).map_err(|e| EnvError(format!("{e} (from CONSUL_CLIENT_CERT)")))?;
    let key_pem = crate::config::files::read(&key).map_err(|e| {
        EnvError(format!(
            "cannot read {} (from CONSUL_CLIENT_KEY): {e}",
            key.display()
        ))
    })?;
    if rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
        return Err(EnvError(format!(
            "{} (from CONSUL_CLIENT_KEY) holds no PEM private key",
            key.display()
        )));
    }
    Ok(Some(ClientCert { chain, key_pem }))
}

/// The certificates of one PEM file; none is an error.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, EnvError> {
    let pem = crate::config::files::read(path)
        .map_err(|e| EnvError(format!("cannot read {}: {e}", path.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| EnvError(format!("{} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(EnvError(format!(
            "{} holds no CERTIFICATE block",
            path.display()
        )));
    }
    Ok(certs)
}

/// `CONSUL_CAPATH`: every file in the directory is a PEM CA bundle, as Consul's CLI loads
/// it; a file without a certificate is an error rather than a silently smaller trust set.
pub fn ca_dir(dir: &Path) -> Result<Vec<CertificateDer<'static>>, EnvError> {
    let from = |e: &dyn fmt::Display| EnvError(format!("{e} (from CONSUL_CAPATH)"));
    let entries = std::fs::read_dir(dir).map_err(|e| {
        from(&format_args!(
            "cannot read the directory {}: {e}",
            dir.display()
        ))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut all = Vec::new();
    for f in &files {
        all.extend(certificates(f).map_err(|e| from(&e))?);
    }
    if all.is_empty() {
        return Err(from(&format_args!("{} holds no CA file", dir.display())));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_as_go_parses_them() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["yes", "on", "tRUE", "2", "", "truee"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
        let e = bool_var("CONSUL_HTTP_SSL", Some("yes".into()))
            .unwrap_err()
            .0;
        assert!(e.starts_with("CONSUL_HTTP_SSL=\"yes\""), "{e}");
    }

    #[test]
    fn client_cert_needs_both_files_and_hides_the_key() {
        let fixture = |n: &str| format!("{}/tests/fixtures/tls/{n}", env!("CARGO_MANIFEST_DIR"));
        assert_eq!(client_cert(None, None).unwrap(), None);
        let e = client_cert(Some(fixture("web.pem")), None).unwrap_err().0;
        assert!(e.contains("without CONSUL_CLIENT_KEY"), "{e}");
        let c = client_cert(Some(fixture("web.pem")), Some(fixture("web-key-sec1.pem")))
            .unwrap()
            .unwrap();
        assert!(!c.chain.is_empty());
        assert!(!format!("{c:?}").contains("PRIVATE"), "{c:?}");
        let e = client_cert(Some(fixture("web.pem")), Some(fixture("web.pem")))
            .unwrap_err()
            .0;
        assert!(e.contains("holds no PEM private key"), "{e}");
    }

    #[test]
    fn a_ca_directory_loads_every_file() {
        let dir = std::env::temp_dir().join(format!("sidegate-capath-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = std::fs::read(format!(
            "{}/tests/fixtures/tls/ca.pem",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        std::fs::write(dir.join("a.pem"), &ca).unwrap();
        std::fs::write(dir.join("b.pem"), &ca).unwrap();
        assert_eq!(ca_dir(&dir).unwrap().len(), 2);
        std::fs::write(dir.join("c.txt"), "not a CA").unwrap();
        let e = ca_dir(&dir).unwrap_err().0;
        assert!(e.contains("c.txt") && e.contains("CONSUL_CAPATH"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(ca_dir(&dir).unwrap_err().0.contains("cannot read"));
    }
}
