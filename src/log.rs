//! Logging to stderr, shaped for journald when systemd runs us and for people otherwise.
//!
//! Under systemd (stderr is the stream `JOURNAL_STREAM` names) each line starts with a `<N>`
//! syslog priority and has no timestamp (the journal adds its own); elsewhere lines carry an
//! RFC 3339 UTC timestamp and the level.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }

    fn syslog_priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JOURNAL: AtomicBool = AtomicBool::new(false);
/// `SIDEGATE_LOG` set a level, which the configuration file then does not override.
static FROM_ENV: AtomicBool = AtomicBool::new(false);

/// Reads `SIDEGATE_LOG` (error, warn, info, debug) and `JOURNAL_STREAM`.
pub fn init_from_env() {
    JOURNAL.store(stderr_is_journal(), Ordering::Relaxed);
    if let Ok(value) = std::env::var("SIDEGATE_LOG") {
        match Level::parse(&value) {
            Some(level) => {
                set_level(level);
                FROM_ENV.store(true, Ordering::Relaxed);
            }
            None => crate::warn!(
                "SIDEGATE_LOG={value:?} is not one of error, warn, info, debug; ignoring it"
            ),
        }
    }
}

/// Applies the configuration file's `[log] level` (info when absent), unless `SIDEGATE_LOG`
/// chose one: the environment is how an operator turns on debug for one run without editing
/// the file.
pub fn configure(level: Option<Level>) {
    if !FROM_ENV.load(Ordering::Relaxed) {
        set_level(level.unwrap_or(Level::Info));
    }
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` for the stream it connected to stdout/stderr.
/// It is inherited by anything we might be started from, so the prefixes are used only when
/// stderr is still that very stream (sd_journal_stream_fd(3) recommends the same check).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    match (stderr, dev.parse::<u64>(), ino.parse::<u64>()) {
        (Ok(meta), Ok(dev), Ok(ino)) => meta.dev() == dev && meta.ino() == ino,
        _ => false,
    }
}

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let head = if JOURNAL.load(Ordering::Relaxed) {
        Head::Journal(level.syslog_priority())
    } else {
        Head::Human(Utc(SystemTime::now()), level.name())
    };
    let mut out = Lines {
        out: std::io::stderr().lock(),
        buf: [0; LINE_BUF],
        len: 0,
        head,
        fresh: true,
    };
    // A closed stderr must not take the proxy down; the line is simply lost.
    let _ = fmt::Write::write_fmt(&mut out, format_args!("{args}\n"));
    out.flush();
}

/// Most lines fit: one write(2) per line, without allocating.
const LINE_BUF: usize = 512;

/// What starts every line of a message.
enum Head {
    Journal(u8),
    Human(Utc, &'static str),
}

/// Writes a message through a stack buffer, starting each of its lines with the head, so a
/// multi-line message (a reload's list of errors) keeps its priority on every line in the
/// journal.
struct Lines<W: Write> {
    out: W,
    buf: [u8; LINE_BUF],
    len: usize,
    head: Head,
    fresh: bool,
}

impl<W: Write> Lines<W> {
    fn put(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > LINE_BUF {
            self.flush();
        }
        if bytes.len() > LINE_BUF {
            let _ = self.out.write_all(bytes);
        } else {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    fn flush(&mut self) {
        let _ = self.out.write_all(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl<W: Write> fmt::Write for Lines<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for piece in s.split_inclusive('\n') {
            if self.fresh {
                self.fresh = false;
                match &self.head {
                    Head::Journal(p) => {
                        let p = *p;
                        write!(self, "<{p}>")?;
                    }
                    Head::Human(at, name) => {
                        let (at, name) = (Utc(at.0), *name);
                        write!(self, "{at} {name:5} ")?;
                    }
                }
            }
            self.put(piece.as_bytes());
            self.fresh = piece.ends_with('\n');
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! log_at {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, format_args!($($arg)*));
        }
    };
}
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Error, $($arg)*) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Warn, $($arg)*) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Info, $($arg)*) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Debug, $($arg)*) }; }

/// RFC 3339 UTC time with milliseconds, without a date crate.
struct Utc(SystemTime);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
        let rem = secs % 86_400;
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_687_200_123); // 2026-11-26T10:00:00.123Z
        assert_eq!(Utc(t).to_string(), "2026-11-26T10:00:00.123Z");
        assert_eq!(Utc(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn every_line_of_a_message_gets_the_head() {
        let lines = |head: Head, args: fmt::Arguments<'_>| {
            let mut out = Lines {
                out: Vec::new(),
                buf: [0; LINE_BUF],
                len: 0,
                head,
                fresh: true,
            };
            fmt::Write::write_fmt(&mut out, args).unwrap();
            out.flush();
            String::from_utf8(out.out).unwrap()
        };
        assert_eq!(
            lines(
                Head::Journal(3),
                format_args!("a: 2 errors\n  x: bad\n  y: worse\n")
            ),
            "<3>a: 2 errors\n<3>  x: bad\n<3>  y: worse\n"
        );
        let long = "z".repeat(LINE_BUF * 2);
        assert_eq!(
            lines(
                Head::Human(Utc(UNIX_EPOCH), "WARN"),
                format_args!("{long}\nend\n")
            ),
            format!("1970-01-01T00:00:00.000Z WARN  {long}\n1970-01-01T00:00:00.000Z WARN  end\n"),
            "a line longer than the buffer"
        );
    }

    #[test]
    fn parses_levels() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("warning"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
    }
}
