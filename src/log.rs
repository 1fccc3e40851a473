//! Logging to stderr, shaped for journald when systemd runs us and for people otherwise.
//!
//! Under systemd (stderr is the stream `JOURNAL_STREAM` names) each line starts with a `<N>`
//! syslog priority and has no timestamp (the journal adds its own); elsewhere lines carry an
//! RFC 3339 UTC timestamp and the level. `[log] format = "json"` writes one JSON object per
//! line instead (`timestamp`, `level`, `target`, `message`), for log shippers.
//!
//! The libraries sidegate links (rustls, ureq) log through the `log` crate; `init_from_env`
//! installs a bridge that writes their records here, capped at debug: at trace, ureq writes
//! request heads and URLs unredacted, and the Consul token travels in a request header.

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

/// How lines are written: for people and journald, or for log shippers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JOURNAL: AtomicBool = AtomicBool::new(false);
static JSON: AtomicBool = AtomicBool::new(false);
/// `SIDEGATE_LOG` set a level, which the configuration file then does not override.
static FROM_ENV: AtomicBool = AtomicBool::new(false);

/// Reads `SIDEGATE_LOG` (error, warn, info, debug) and `JOURNAL_STREAM`, and installs the
/// bridge for the `log` crate's records.
pub fn init_from_env() {
    JOURNAL.store(stderr_is_journal(), Ordering::Relaxed);
    install_bridge();
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
pub fn configure(level: Option<Level>, format: Format) {
    if !FROM_ENV.load(Ordering::Relaxed) {
        set_level(level.unwrap_or(Level::Info));
    }
    set_format(format);
}

pub fn set_format(format: Format) {
    JSON.store(format == Format::Json, Ordering::Relaxed);
}

/// The `log` crate's records (rustls, ureq) into this logger.
struct Bridge;

static BRIDGE: Bridge = Bridge;

/// Trace has no level here: it is never written (see the module's comment).
fn from_log(level: log::Level) -> Option<Level> {
    match level {
        log::Level::Error => Some(Level::Error),
        log::Level::Warn => Some(Level::Warn),
        log::Level::Info => Some(Level::Info),
        log::Level::Debug => Some(Level::Debug),
        log::Level::Trace => None,
    }
}

impl log::Log for Bridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        from_log(metadata.level()).is_some_and(enabled)
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Some(level) = from_log(record.level()).filter(|l| enabled(*l)) {
            write_from(level, record.target(), *record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the bridge once; the `log` crate's own ceiling is debug, so `log_enabled!(Trace)`
/// is false in every library whatever the level.
pub fn install_bridge() {
    if log::set_logger(&BRIDGE).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
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
    write_from(level, "sidegate", args);
}

/// Writes one record; `target` is the module it came from (a library's, for bridged records).
pub fn write_from(level: Level, target: &str, args: fmt::Arguments<'_>) {
    if JSON.load(Ordering::Relaxed) {
        let line = json_line(Utc(SystemTime::now()), level, target, args);
        // A closed stderr must not take the proxy down; the line is simply lost.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        return;
    }
    let head = if JOURNAL.load(Ordering::Relaxed) {
        Head::Journal(level.syslog_priority())
    } else {
        Head::Human(Utc(SystemTime::now()), level.name())
    };
    // sidegate's own lines read as they always did; a library's name its module.
    let own = target == "sidegate" || target.starts_with("sidegate::");
    let (target, sep) = if own { ("", "") } else { (target, ": ") };
    let mut out = Lines {
        out: std::io::stderr().lock(),
        buf: [0; LINE_BUF],
        len: 0,
        head,
        fresh: true,
    };
    // A closed stderr must not take the proxy down; the line is simply lost.
    let _ = fmt::Write::write_fmt(&mut out, format_args!("{target}{sep}{args}\n"));
    out.flush();
}

/// One JSON object and a newline. It allocates, unlike the text lines: the format is chosen
/// for shippers, and serde_json escapes whatever a message holds (quotes, control
/// characters, names from the network) so that every line parses.
fn json_line(at: Utc, level: Level, target: &str, args: fmt::Arguments<'_>) -> String {
    let record = serde_json::json!({
        "timestamp": at.to_string(),
        "level": level.name().to_ascii_lowercase(),
        "target": target,
        "message": args.to_string(),
    });
    let mut line = record.to_string();
    line.push('\n');
    line
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
            $crate::log::write_from($level, module_path!(), format_args!($($arg)*));
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
    fn json_lines_parse_and_escape() {
        let line = json_line(
            Utc(UNIX_EPOCH),
            Level::Warn,
            "rustls::conn",
            format_args!("a \"quoted\" name\nsecond line \u{1b}[31m"),
        );
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["target"], "rustls::conn");
        assert_eq!(v["message"], "a \"quoted\" name\nsecond line \u{1b}[31m");
    }

    #[test]
    fn the_bridge_never_passes_trace() {
        install_bridge();
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
        assert_eq!(from_log(log::Level::Trace), None);
        assert_eq!(from_log(log::Level::Warn), Some(Level::Warn));
        let trace = log::Metadata::builder()
            .level(log::Level::Trace)
            .target("ureq::run")
            .build();
        assert!(!log::Log::enabled(&BRIDGE, &trace));
    }

    #[test]
    fn parses_formats() {
        assert_eq!(Format::parse("JSON"), Some(Format::Json));
        assert_eq!(Format::parse("text"), Some(Format::Text));
        assert_eq!(Format::parse("logfmt"), None);
    }

    #[test]
    fn parses_levels() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("warning"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
    }
}
