//! This host's mesh identity: leaf chain, private key, trusted roots, and the SPIFFE ID the
//! leaf proves. Validated from PEM without I/O, so the file source and the Consul agent's leaf
//! and roots go through the same checks.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::names::{SpiffeError, SpiffeId};

/// A leaf this close to expiry gets a warning at load time.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(24 * 3600);

pub struct Identity {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    /// The leaf's service identity.
    pub spiffe_id: SpiffeId,
    pub not_after: SystemTime,
}

#[derive(Debug, PartialEq, Eq)]
pub enum IdentityError {
    NoCertificate,
    NoKey,
    UnsupportedKey(String),
    KeyMismatch,
    BadLeaf(String),
    NoSpiffe,
    BadSpiffe(SpiffeError),
    NotAService(String),
    Expired { not_after: u64 },
    NoRoots,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::NoCertificate => f.write_str("holds no PEM CERTIFICATE block"),
            IdentityError::NoKey => {
                f.write_str("holds no private key (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`)")
            }
            IdentityError::UnsupportedKey(e) => write!(f, "holds a private key that cannot be used: {e}"),
            IdentityError::KeyMismatch => f.write_str("does not match the certificate's public key (is it the leaf's key?)"),
            IdentityError::BadLeaf(e) => write!(f, "leaf certificate cannot be read: {e}"),
            IdentityError::NoSpiffe => {
                f.write_str("leaf has no spiffe:// URI SAN; Consul service leaves carry spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>")
            }
            IdentityError::BadSpiffe(e) => write!(f, "leaf's SPIFFE ID is invalid: {e}"),
            IdentityError::NotAService(id) => write!(f, "leaf's SPIFFE ID {id} is not a service identity"),
            IdentityError::Expired { not_after } => write!(f, "leaf expired (not after {not_after}, seconds since 1970)"),
            IdentityError::NoRoots => f.write_str("holds no trusted root CERTIFICATE"),
        }
    }
}

impl std::error::Error for IdentityError {}

/// Which input an error is about, so the file source can name the right key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Chain,
    Key,
    Roots,
}

impl Identity {
    /// Validates PEM inputs: a certificate chain, a private key that matches its leaf, the
    /// leaf's SPIFFE service ID, unexpired, and at least one root.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        roots_pem: &[u8],
    ) -> Result<Identity, (Part, IdentityError)> {
        let chain = certs(chain_pem).map_err(|e| (Part::Chain, e))?;
        let roots = certs(roots_pem).map_err(|_| (Part::Roots, IdentityError::NoRoots))?;
        let (key, signer) = read_key(key_pem).map_err(|e| (Part::Key, e))?;
        CertifiedKey::new(chain.clone(), signer)
            .keys_match()
            .map_err(|_| (Part::Key, IdentityError::KeyMismatch))?;
        let (spiffe_id, not_after) = read_leaf(&chain[0]).map_err(|e| (Part::Chain, e))?;
        Ok(Identity {
            chain,
            key,
            roots,
            spiffe_id,
            not_after,
        })
    }

    /// A warning when the leaf expires within `EXPIRY_WARNING` of `now`: a leaf from a file is
    /// not renewed by anyone but the operator.
    pub fn expiry_warning(&self, now: SystemTime) -> Option<String> {
        let left = self.remaining(now);
        (left < EXPIRY_WARNING).then(|| {
            format!(
                "leaf certificate {} expires in {} minutes; renew it",
                self.spiffe_id,
                left.as_secs() / 60
            )
        })
    }

    /// Time left before the leaf expires (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }
}

impl Identity {
    /// What a leaf, key and roots from files must also pass before they are served: a peer
    /// would refuse them at every handshake, so `check` and `run` refuse them first. Every
    /// problem found, each with the input it is about. (The Consul agent's leaf and roots do
    /// not go through this: the agent issues them together and renews them itself.)
    pub fn problems(&self, now: SystemTime) -> Vec<(Part, String)> {
        let mut found = Vec::new();
        for (i, root) in self.roots.iter().enumerate() {
            let n = i + 1;
            if Some(root) == self.chain.first() {
                found.push((
                    Part::Roots,
                    format!("certificate {n} is the leaf itself, not the CA that signed it"),
                ));
                continue;
            }
            match X509Certificate::from_der(root) {
                Ok((_, cert)) if cert.is_ca() => {}
                Ok((_, cert)) => found.push((
                    Part::Roots,
                    format!(
                        "certificate {n} ({}) is not a CA (its basicConstraints do not say CA:TRUE)",
                        cert.subject()
                    ),
                )),
                Err(e) => found.push((
                    Part::Roots,
                    format!("certificate {n} cannot be read: {e}"),
                )),
            }
        }
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let not_before = self
            .chain
            .first()
            .and_then(|leaf| X509Certificate::from_der(leaf).ok())
            .and_then(|(_, cert)| u64::try_from(cert.validity().not_before.timestamp()).ok())
            .unwrap_or(0);
        if not_before > now_secs {
            found.push((
                Part::Chain,
                format!(
                    "leaf is not valid yet: not before {not_before} (seconds since 1970), {} s from now; is this host's clock right?",
                    not_before - now_secs
                ),
            ));
        }
        // The chain as a peer checks it (signatures, CA flags, path to a root), at a time the
        // leaf is valid so that a leaf that is merely early still has its issuer checked.
        let at = UnixTime::since_unix_epoch(Duration::from_secs(now_secs.max(not_before + 1)));
        if let Err(why) = self.verify_chain(at) {
            found.push((Part::Chain, why.to_string()));
        }
        found
    }

    fn verify_chain(&self, at: UnixTime) -> Result<(), ChainError> {
        let Some((leaf, intermediates)) = self.chain.split_first() else {
            return Err(ChainError::NoCertificate);
        };
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(self.roots.iter().cloned());
        if added == 0 {
            return Err(ChainError::NoUsableCa);
        }
        let leaf = ParsedCertificate::try_from(leaf).map_err(ChainError::BadLeaf)?;
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        verify_server_cert_signed_by_trust_anchor(&leaf, &roots, intermediates, at, algs.all)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                    ChainError::UnknownIssuer
                }
                e => ChainError::Rejected(e),
            })
    }
}

/// Why a chain from files would not verify at a peer; shown after the chain's key name.
#[derive(Debug)]
enum ChainError {
    NoCertificate,
    /// `ca_file` holds nothing rustls can use as a trust anchor.
    NoUsableCa,
    BadLeaf(rustls::Error),
    /// No path from the leaf to a root in `ca_file`.
    UnknownIssuer,
    /// A path, but one a peer refuses (expired intermediate, wrong usage, bad signature...).
    Rejected(rustls::Error),
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::NoCertificate => f.write_str("holds no certificate"),
            ChainError::NoUsableCa => {
                f.write_str("is not signed by any CA in ca_file: ca_file holds no usable CA")
            }
            ChainError::BadLeaf(e) => write!(f, "leaf cannot be read: {e}"),
            ChainError::UnknownIssuer => f.write_str(
                "is not signed by any CA in ca_file (nor through the intermediates after the leaf)",
            ),
            ChainError::Rejected(e) => write!(f, "does not verify against ca_file: {e}"),
        }
    }
}

impl std::error::Error for ChainError {}

/// A private key rustls can sign with, from PEM; also checked on its own when the
/// certificate cannot be read, so that both problems are reported at once.
pub fn read_key(
    key_pem: &[u8],
) -> Result<
    (
        PrivateKeyDer<'static>,
        std::sync::Arc<dyn rustls::sign::SigningKey>,
    ),
    IdentityError,
> {
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| IdentityError::NoKey)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| IdentityError::UnsupportedKey(e.to_string()))?;
    Ok((key, signer))
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificate);
    }
    Ok(certs)
}

/// The leaf's SPIFFE service ID (its first spiffe:// URI SAN) and its expiry.
fn read_leaf(leaf: &CertificateDer<'_>) -> Result<(SpiffeId, SystemTime), IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| IdentityError::BadLeaf(e.to_string()))?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if not_after <= now {
        return Err(IdentityError::Expired { not_after });
    }
    let uri = super::san::spiffe_uri_of(&cert)
        .map_err(|e| IdentityError::BadLeaf(e.to_string()))?
        .ok_or(IdentityError::NoSpiffe)?;
    let id = SpiffeId::parse(&uri).map_err(IdentityError::BadSpiffe)?;
    if !matches!(id, SpiffeId::Service { .. }) {
        return Err(IdentityError::NotAService(id.to_string()));
    }
    Ok((id, UNIX_EPOCH + Duration::from_secs(not_after)))
}

/// Equal when the same material: a reload with unchanged files changes nothing.
impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain
            && self.roots == other.roots
            && self.key.secret_der() == other.key.secret_der()
    }
}

/// Shown in plans as what it proves, never what it holds.
impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Identity", 3)?;
        st.serialize_field("spiffe_id", &self.spiffe_id.to_string())?;
        st.serialize_field(
            "not_after",
            &self
                .not_after
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        )?;
        st.serialize_field("chain_certificates", &self.chain.len())?;
        st.end()
    }
}

/// Key material never reaches logs or `/config`: show what it is, not what it holds.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn loads_each_key_format() {
        let ca = fixture("ca.pem");
        for (cert, key, id) in [
            (
                "web.pem",
                "web-key-sec1.pem",
                format!("spiffe://{TD}/ns/default/dc/dc1/svc/web"),
            ),
            (
                "web.pem",
                "web-key-pkcs8.pem",
                format!("spiffe://{TD}/ns/default/dc/dc1/svc/web"),
            ),
            (
                "db.pem",
                "db-key-pkcs1.pem",
                format!("spiffe://{TD}/ap/part2/ns/default/dc/dc1/svc/db"),
            ),
        ] {
            let identity = Identity::from_pem(&fixture(cert), &fixture(key), &ca)
                .unwrap_or_else(|e| panic!("{key}: {e:?}"));
            assert_eq!(identity.spiffe_id.to_string(), id, "{key}");
            assert!(identity.expiry_warning(SystemTime::now()).is_none());
            let near_the_end = identity.not_after - Duration::from_secs(3600);
            let warning = identity.expiry_warning(near_the_end).unwrap_or_default();
            assert!(warning.contains("expires in 60 minutes"), "{warning}");
            assert!(
                !format!("{identity:?}").contains("BEGIN"),
                "Debug must not show key material"
            );
        }
    }

    /// chain, key, roots, and the refusal expected.
    type Case = (Vec<u8>, Vec<u8>, Vec<u8>, (Part, IdentityError));

    #[test]
    fn refuses_with_the_reason() {
        let (ca, web, web_key) = (
            fixture("ca.pem"),
            fixture("web.pem"),
            fixture("web-key-sec1.pem"),
        );
        let cases: Vec<Case> = vec![
            (
                b"".to_vec(),
                web_key.clone(),
                ca.clone(),
                (Part::Chain, IdentityError::NoCertificate),
            ),
            (
                web.clone(),
                b"junk".to_vec(),
                ca.clone(),
                (Part::Key, IdentityError::NoKey),
            ),
            (
                web.clone(),
                fixture("db-key-pkcs1.pem"),
                ca.clone(),
                (Part::Key, IdentityError::KeyMismatch),
            ),
            (
                fixture("nospiffe.pem"),
                fixture("nospiffe-key.pem"),
                ca.clone(),
                (Part::Chain, IdentityError::NoSpiffe),
            ),
            (
                web.clone(),
                web_key.clone(),
                b"".to_vec(),
                (Part::Roots, IdentityError::NoRoots),
            ),
        ];
        for (chain, key, roots, want) in cases {
            let got = Identity::from_pem(&chain, &key, &roots)
                .map(|_| ())
                .expect_err("must be refused");
            assert_eq!(got, want);
        }
        // The CA's own certificate carries only the signing ID, not a service identity.
        let got = Identity::from_pem(&ca, &fixture("ca-key.pem"), &ca)
            .map(|_| ())
            .expect_err("CA is no service");
        assert!(
            matches!(got, (Part::Chain, IdentityError::NotAService(_))),
            "{got:?}"
        );
    }
}
