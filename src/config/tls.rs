//! `[tls]`: this host's identity from files (the file source). Paths are relative to the
//! configuration file, so a config directory can be copied to a device as a whole.

use std::path::Path;
use std::sync::Arc;

use super::fields::Fields;
use crate::tls::identity::{Identity, Part};

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
    t.finish();
    let ((cert_name, cert), (key_name, key), (ca_name, ca)) = (cert?, key?, ca?);
    match Identity::from_pem(&cert, &key, &ca) {
        Ok(identity) => Some(Arc::new(identity)),
        Err((part, e)) => {
            let (field, name) = match part {
                Part::Chain => ("cert_file", cert_name),
                Part::Key => ("key_file", key_name),
                Part::Roots => ("ca_file", ca_name),
            };
            t.error(field, format!("{name:?} {e}"));
            None
        }
    }
}
