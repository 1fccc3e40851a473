//! Reading the files a configuration names (itself, keys, certificates, tokens) with a size
//! bound: a path mistyped as `/dev/zero` or a log file must be an error, not a hang that eats
//! the memory of a 512 MB board.

use std::fs::{self, File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Far above any real configuration, CA bundle or token, far below a board's memory.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path, false)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB: not a configuration, key or certificate file",
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    Ok(bytes)
}

pub fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Opens `path` for reading only if it is a regular file (with `no_follow`, not through a
/// symlink either). A FIFO given as a key file would otherwise block the open until a writer
/// came and then every read until it wrote: `check` hung, and a reload hung the loop that
/// also acts on SIGTERM. So the open is non-blocking (for a regular file that changes
/// nothing), and what it opened is looked at before a byte is read.
pub fn open_regular(path: &Path, no_follow: bool) -> io::Result<File> {
    let mut flags = rustix::fs::OFlags::NONBLOCK;
    if no_follow {
        flags |= rustix::fs::OFlags::NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", describe(kind)),
        ));
    }
    Ok(file)
}

fn describe(kind: FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

/// Refuses a state directory another user could write to or owns: whoever can create entries
/// in it can plant links where our files go and states we would serve as last-known-good.
pub fn check_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not by this user (uid {me}): another user controls what is saved there",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by group or others (mode {:o}): another user could plant files there; make it 0700",
                dir.display(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_endless_file_is_an_error_not_a_hang() {
        // A device is refused before it is read; a regular file past the bound is refused
        // after 4 MiB (a sparse file: nothing is written to disk).
        let e = super::read(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("is a character device"), "{e}");
        let dir = std::env::temp_dir().join(format!("sidegate-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(super::MAX_FILE_BYTES + 1)
            .unwrap();
        let e = super::read(&big).unwrap_err();
        assert!(e.to_string().contains("larger than 4 MiB"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO as a key file is refused at once, with no writer ever coming (before, the open
    /// blocked until one did).
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("sidegate-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("key.pem");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = super::read(&fifo).unwrap_err();
        assert!(
            e.to_string()
                .contains("is a FIFO (named pipe), not a regular file"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
