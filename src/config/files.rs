//! Reading the files a configuration names (itself, keys, certificates, tokens) with a size
//! bound: a path mistyped as `/dev/zero` or a log file must be an error, not a hang that eats
//! the memory of a 512 MB board.

use std::io::{self, Read};
use std::path::Path;

/// Far above any real configuration, CA bundle or token, far below a board's memory.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
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

#[cfg(test)]
mod tests {
    #[test]
    fn an_endless_file_is_an_error_not_a_hang() {
        let e = super::read(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("larger than 4 MiB"), "{e}");
    }
}
