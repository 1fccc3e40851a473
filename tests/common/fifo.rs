//! Files that are not regular files, where a regular one belongs.
#![allow(clippy::unwrap_used)]

/// Makes a FIFO (named pipe) at `path`: where a regular file belongs, it must be refused
/// before anything blocks on it.
pub fn make_fifo(path: &std::path::Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}
