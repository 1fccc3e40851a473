//! The standard `process_*` metrics, with the meaning Prometheus' own client libraries give
//! them, read from `/proc/self` at each scrape: memory and file descriptors are the budgets a
//! board runs sidegate within, and every Prometheus dashboard already knows these names.
//!
//! Cheap and allocation-free: `/proc/self/statm` and `/proc/self/stat` are read into a stack
//! buffer, `/proc/self/fd` is counted with `getdents` into another, the limit is one
//! `getrlimit`. Memory comes from `statm`, not `stat`'s fields: qemu-user (the emulated test
//! runs) answers `/proc/self/stat` itself with those fields zero, while `statm` is the real
//! one on a board and under the emulator alike. The unit's
//! `ProcSubset=pid` hides `/proc/stat` (boot time), so the start time is derived from the
//! clocks instead. A value that cannot be read is left out with its family, as the Go client
//! does: a missing series is plainer than a false zero.

use std::fmt::Write;
use std::io::Read;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use rustix::fs::{openat, Mode, OFlags, RawDir, CWD};
use rustix::process::{getrlimit, Resource};
use rustix::time::{clock_gettime, ClockId};

/// Field 22 of a `/proc/<pid>/stat` line: clock ticks from boot to the process's start. The
/// command name (field 2) is in parentheses and may hold spaces and parentheses itself, so
/// the fields are counted from the last `)`.
fn parse_start_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name, field 3 (state) is the first; field N is at index N - 3.
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// Reads a small `/proc/self` file into `buf` and hands its text to `parse`.
fn read_proc<T>(path: &str, parse: impl FnOnce(&str) -> Option<T>) -> Option<T> {
    // A stat line is about 300 bytes (the name is at most 64); statm's is shorter.
    let mut buf = [0u8; 1024];
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    parse(std::str::from_utf8(buf.get(..len)?).ok()?)
}

/// `/proc/self/statm`'s first two fields: pages of virtual memory, resident pages.
fn parse_statm(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_ascii_whitespace();
    let mut next = || fields.next()?.parse::<u64>().ok();
    Some((next()?, next()?))
}

/// Open file descriptors, not counting the one this count reads the directory through.
fn open_fds() -> Option<u64> {
    let dir = openat(
        CWD,
        "/proc/self/fd",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let own = dir.as_raw_fd();
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = RawDir::new(&dir, &mut buf);
    let mut count = 0u64;
    while let Some(entry) = entries.next() {
        let entry = entry.ok()?;
        let name = entry.file_name().to_bytes();
        match std::str::from_utf8(name).ok()?.parse::<i32>() {
            Ok(fd) if fd == own => {}
            Ok(_) => count += 1,
            // "." and ".."
            Err(_) => {}
        }
    }
    Some(count)
}

/// Seconds since 1970 at the process's start. The kernel counts the start in ticks of
/// `CLOCK_BOOTTIME`, so the wall clock's distance from that clock now gives the boot time.
/// Computed once: the distance moves with every wall-clock adjustment, and the start did not.
fn start_time_seconds() -> Option<u64> {
    static START: OnceLock<Option<u64>> = OnceLock::new();
    *START.get_or_init(|| {
        let start_ticks = read_proc("/proc/self/stat", parse_start_ticks)?;
        let now = clock_gettime(ClockId::Realtime);
        if start_ticks == 0 {
            // qemu-user's stand-in for /proc/self/stat: the first look is close enough for
            // an emulated test run (a kernel never reports 0 for a process it started).
            return u64::try_from(now.tv_sec).ok();
        }
        let ticks = rustix::param::clock_ticks_per_second().max(1);
        let since_boot = clock_gettime(ClockId::Boottime);
        let boot = u64::try_from(now.tv_sec.checked_sub(since_boot.tv_sec)?).ok()?;
        Some(boot + start_ticks / ticks)
    })
}

/// The `process_*` families, appended to the exposition.
pub fn render_process(out: &mut String) {
    let statm = read_proc("/proc/self/statm", parse_statm);
    let page = rustix::param::page_size() as u64;
    let max_fds = getrlimit(Resource::Nofile).current;
    let rows: [(&str, &str, Option<u64>); 5] = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            statm.map(|(_, resident)| resident.saturating_mul(page)),
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            statm.map(|(size, _)| size.saturating_mul(page)),
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            open_fds(),
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors (the soft RLIMIT_NOFILE).",
            max_fds,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            start_time_seconds(),
        ),
    ];
    for (name, help, value) in rows {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with spaces and a ")" must not shift the fields.
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 \
                    98765 12345678 321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(parse_start_ticks(line), Some(98765));
        assert_eq!(parse_start_ticks("4242 (truncated"), None);
        assert_eq!(parse_start_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_statm("5000 321 100 20 0 900 0\n"), Some((5000, 321)));
        assert_eq!(parse_statm("5000"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let mut text = String::new();
        render_process(&mut text);
        let value = |name: &str| -> u64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            line[name.len() + 1..].parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 100_000, "{text}");
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        // stdin, stdout and stderr at least (other tests of this binary open files
        // concurrently, so the exact count is checked on the binary: tests/operations).
        let fds = value("process_open_fds");
        assert!(fds >= 3, "{text}");
        assert!(value("process_max_fds") >= fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let start = value("process_start_time_seconds");
        assert!(start <= now && now - start < 3600, "{start} vs {now}");
    }
}
