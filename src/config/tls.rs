//! `[tls]`: this host's identity from files (the file source). Paths are relative to the
//! configuration file, so a config directory can be copied to a device as a whole.

use std::path::Path;
use std::sync::Arc;

use super::fields::Fields;
use crate::tls::identity::{read_key, Identity, Part};

pub fn identity(t: &Fields<'_>, base: &Path) -> Option<Arc<Identity>> {
    let read = |key: &'static str| {
        let name = t.required_str(key)?;
        let path = base.join(name);
        match super::files::read(&path) {
            Ok(bytes) => Some((name, bytes)),
            Err(e) => {
                t.error(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    };
    let (cert, key, ca) = (read("cert_file"), read("key_file"), read("ca_file"));
    if key.is_some() {
        if let Some(name) = t.str("key_file") {
            warn_if_others_can_read(t, "key_file", &base.join(name));
        }
    }
    t.finish();
    let field_of = |part| match part {
        Part::Chain => "cert_file",
        Part::Key => "key_file",
        Part::Roots => "ca_file",
    };
    let ((cert_name, cert), (key_name, key), (ca_name, ca)) = match (cert, key, ca) {
        (Some(c), Some(k), Some(r)) => (c, k, r),
        (_, key, _) => {
            // The certificate (or CA) could not be read: the key can still be checked on its
            // own, so that one run of `check` reports both.
            if let Some((name, pem)) = key {
                if let Err(e) = read_key(&pem) {
                    t.error("key_file", format!("{name:?} {e}"));
                }
            }
            return None;
        }
    };
    let name_of = |part| match part {
        Part::Chain => cert_name,
        Part::Key => key_name,
        Part::Roots => ca_name,
    };
    match Identity::from_pem(&cert, &key, &ca) {
        Ok(identity) => {
            let problems = identity.problems(std::time::SystemTime::now());
            for (part, why) in &problems {
                t.error(field_of(*part), format!("{:?} {why}", name_of(*part)));
            }
            problems.is_empty().then(|| Arc::new(identity))
        }
        Err((part, e)) => {
            t.error(field_of(part), format!("{:?} {e}", name_of(part)));
            None
        }
    }
}

/// A private key or token that group or others can read is one `cat` away from anyone on
/// the host: valid, but worth a warning.
pub fn warn_if_others_can_read(t: &Fields<'_>, key: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            t.warn(
                key,
                format!(
                    "{} is readable by group or others (mode {mode:03o}); make it 0600",
                    path.display()
                ),
            );
        }
    }
}
