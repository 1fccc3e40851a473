//! Last-known-good state files in `state_dir`: written atomically (temporary file, fsync,
//! rename, fsync of the directory) with mode 0600 because they hold the leaf's private key,
//! and read back only when a header's version, length and SHA-256 match, so a file cut short
//! by a power loss or edited by hand is detected and ignored rather than served.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &str = "sidegate-state";
const VERSION: u32 = 1;
/// Far above any real state; a larger file is not ours.
const MAX_FILE: u64 = 64 << 20;

#[derive(Debug)]
pub enum ReadError {
    /// No file: nothing was saved yet.
    Missing,
    Io(io::Error),
    /// The file is there but is not a complete state written by this version.
    Corrupt(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Missing => f.write_str("no saved state"),
            ReadError::Io(e) => write!(f, "cannot read it: {e}"),
            ReadError::Corrupt(why) => write!(f, "it is corrupt or incomplete ({why}); ignored"),
        }
    }
}

pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Replaces `dir/name` with `payload` so that a reader sees the old file or the new one,
/// never a mix, even across a crash.
pub fn write(dir: &Path, name: &str, payload: &[u8]) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    crate::config::files::check_dir(dir)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let header = format!(
        "{MAGIC} {VERSION} sha256={} bytes={}\n",
        hex(ring::digest::digest(&ring::digest::SHA256, payload).as_ref()),
        payload.len()
    );
    let written = (|| {
        let mut f = match create_private(&tmp) {
            // Left by a crash of a process with our PID (PID 1 in a container, every
            // time): unlinking removes the entry itself, never what a link points at.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&tmp)?;
                create_private(&tmp)?
            }
            other => other?,
        };
        f.write_all(header.as_bytes())?;
        f.write_all(payload)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dir.join(name))?;
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()
}

/// A new file at `path`, mode 0600, that did not exist before: `O_CREAT|O_EXCL` never opens an
/// existing entry, and `O_NOFOLLOW` says so for links too. A link planted at the temporary
/// name would otherwise have had the state, leaf key included, written to its target.
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Saves `value` as JSON in `dir/name` (`write`); a failure is counted in `status` and
/// logged as `what` could not be saved — serving goes on without it.
pub fn save_json<T: serde::Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
    status: &super::status::Status,
    what: &str,
) {
    let written = serde_json::to_vec(value)
        .map_err(io::Error::other)
        .and_then(|bytes| write(dir, name, &bytes));
    if let Err(e) = written {
        status.state_write_error();
        crate::warn!("consul: cannot save {what} in {}: {e}", dir.display());
    }
}

/// The payload of `dir/name`, checked.
pub fn read(dir: &Path, name: &str) -> Result<Vec<u8>, ReadError> {
    let file = match crate::config::files::check_dir(dir)
        .and_then(|()| crate::config::files::open_regular(&dir.join(name), true))
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(ReadError::Corrupt("larger than any state".into()));
    }
    let corrupt = |why: &str| ReadError::Corrupt(why.to_owned());
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no header"))?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| corrupt("bad header"))?;
    let payload = &bytes[newline + 1..];
    let mut parts = header.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err(corrupt("not a sidegate state file"));
    }
    if parts.next() != Some(&VERSION.to_string()) {
        return Err(corrupt("written by another version"));
    }
    let field = |p: Option<&str>, name: &str| {
        p.and_then(|p| p.strip_prefix(name))
            .map(str::to_owned)
            .ok_or_else(|| corrupt("bad header"))
    };
    let sum = field(parts.next(), "sha256=")?;
    let len: usize = field(parts.next(), "bytes=")?
        .parse()
        .map_err(|_| corrupt("bad length"))?;
    if payload.len() != len {
        return Err(ReadError::Corrupt(format!(
            "{} of {len} bytes: cut short",
            payload.len()
        )));
    }
    if hex(ring::digest::digest(&ring::digest::SHA256, payload).as_ref()) != sum {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(payload.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sidegate-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_private_and_atomic() {
        let d = dir("rt");
        assert!(matches!(read(&d, "s.json"), Err(ReadError::Missing)));
        write(&d, "s.json", b"{\"a\":1}").unwrap();
        assert_eq!(read(&d, "s.json").unwrap(), b"{\"a\":1}");
        let mode = fs::metadata(path(&d, "s.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "holds key material");
        write(&d, "s.json", b"second").unwrap();
        assert_eq!(read(&d, "s.json").unwrap(), b"second");
        let leftovers: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["s.json"], "no temporary file left behind");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corruption_is_detected() {
        let d = dir("bad");
        write(&d, "s.json", b"0123456789").unwrap();
        let good = fs::read(path(&d, "s.json")).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 3].to_vec(), "cut short"),
            (
                {
                    let mut b = good.clone();
                    let n = b.len();
                    b[n - 1] ^= 1;
                    b
                },
                "checksum",
            ),
            (b"{\"plain\":\"json\"}".to_vec(), "header"),
            (b"other-tool 1 x\n{}".to_vec(), "not a sidegate"),
            (
                String::from_utf8(good.clone())
                    .unwrap()
                    .replacen(" 1 ", " 9 ", 1)
                    .into_bytes(),
                "another version",
            ),
            (Vec::new(), "header"),
        ];
        for (bytes, want) in cases {
            fs::write(path(&d, "s.json"), &bytes).unwrap();
            match read(&d, "s.json") {
                Err(ReadError::Corrupt(why)) => assert!(why.contains(want), "{why} vs {want}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        fs::remove_dir_all(&d).unwrap();
    }

    /// A link planted at the temporary file's name is not followed: the state (leaf key
    /// included) lands in the state file at 0600, the link's target is untouched.
    #[test]
    fn a_link_at_the_temporary_name_is_not_followed() {
        let d = dir("link");
        fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        let victim = std::env::temp_dir().join(format!("sidegate-victim-{}", std::process::id()));
        fs::write(&victim, b"victim").unwrap();
        let tmp = d.join(format!(".s.json.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        write(&d, "s.json", b"secret state").unwrap();
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"victim",
            "wrote through the link"
        );
        assert_eq!(read(&d, "s.json").unwrap(), b"secret state");
        let mode = fs::metadata(path(&d, "s.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(fs::symlink_metadata(&tmp).is_err(), "the link is gone");
        fs::remove_file(&victim).unwrap();
        fs::remove_dir_all(&d).unwrap();
    }

    /// A directory others can write to is refused for writing and reading alike.
    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        let d = dir("open");
        write(&d, "s.json", b"x").unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        let e = write(&d, "s.json", b"y").unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        match read(&d, "s.json") {
            Err(ReadError::Io(e)) => assert!(e.to_string().contains("mode 777"), "{e}"),
            other => panic!("{other:?}"),
        }
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(read(&d, "s.json").unwrap(), b"x");
        fs::remove_dir_all(&d).unwrap();
    }
}
