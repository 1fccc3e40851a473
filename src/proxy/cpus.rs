//! How many CPUs this process may use: the `[runtime] threads` default.
//!
//! Two things bound it, and the smaller wins: the affinity mask (`taskset`, systemd's
//! `CPUAffinity=`, a container's cpuset) and the cgroup v2 CPU quota (`CPUQuota=`, `docker
//! --cpus`), which lets a process run `quota / period` CPUs' worth of time however many it is
//! allowed on. A quota is read for the process's own cgroup (from `/proc/self/cgroup`) and
//! every cgroup above it, since each one's quota limits everything below.

use std::path::{Path, PathBuf};

/// The most loops the default gives: the boards sidegate runs on have up to 4 cores, and
/// beyond that the loops cost memory without a board to use them.
pub const DEFAULT_MAX_THREADS: usize = 4;

/// Where cgroup v2 is mounted (the unified hierarchy).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The CPUs this process may use, at most `DEFAULT_MAX_THREADS`, at least 1.
pub fn default_threads() -> usize {
    usable_cpus().clamp(1, DEFAULT_MAX_THREADS)
}

/// The smaller of the affinity mask's CPU count and the cgroup quota (rounded up); what
/// cannot be read does not bound it.
pub fn usable_cpus() -> usize {
    let affinity = rustix::thread::sched_getaffinity(None)
        .ok()
        .map(|set| set.count() as usize)
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok();
    let quota = cgroup
        .as_deref()
        .and_then(unified_path)
        .and_then(|p| quota_along(Path::new(CGROUP_ROOT), p));
    quota.map_or(affinity, |q| affinity.min(q))
}

/// The process's cgroup v2 path (the `0::` line of `/proc/self/cgroup`).
fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

/// The smallest quota of the cgroup at `path` below `root` and every cgroup above it.
fn quota_along(root: &Path, path: &str) -> Option<usize> {
    let mut dir: PathBuf = root.to_path_buf();
    let mut smallest = read_quota(&dir);
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
        smallest = match (smallest, read_quota(&dir)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    smallest
}

fn read_quota(dir: &Path) -> Option<usize> {
    std::fs::read_to_string(dir.join("cpu.max"))
        .ok()
        .and_then(|text| cpus_of_quota(&text))
}

/// `cpu.max` ("QUOTA PERIOD", or "max PERIOD" for no limit) as whole CPUs, rounded up: a
/// quota of 1.5 CPUs keeps two loops busy part of the time rather than one all of it.
fn cpus_of_quota(cpu_max: &str) -> Option<usize> {
    let mut words = cpu_max.split_whitespace();
    let quota: u64 = words.next()?.parse().ok()?;
    let period: u64 = words.next()?.parse().ok().filter(|p| *p > 0)?;
    usize::try_from(quota.div_ceil(period))
        .ok()
        .map(|n| n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_is_whole_cpus_rounded_up_and_max_is_no_limit() {
        assert_eq!(cpus_of_quota("max 100000\n"), None);
        assert_eq!(cpus_of_quota("200000 100000\n"), Some(2));
        assert_eq!(cpus_of_quota("150000 100000"), Some(2));
        assert_eq!(cpus_of_quota("1000 100000"), Some(1));
        assert_eq!(cpus_of_quota("100000 0"), None);
        assert_eq!(cpus_of_quota(""), None);
    }

    #[test]
    fn the_unified_line_names_the_cgroup() {
        let v2 = "0::/system.slice/sidegate.service\n";
        assert_eq!(unified_path(v2), Some("/system.slice/sidegate.service"));
        // Hybrid: v1 controllers first, the unified line last.
        let hybrid = "12:cpu,cpuacct:/x\n0::/user.slice\n";
        assert_eq!(unified_path(hybrid), Some("/user.slice"));
        assert_eq!(unified_path("4:cpu:/x\n"), None);
    }

    /// A quota anywhere above the process's cgroup bounds it; the smallest one wins.
    #[test]
    fn the_smallest_quota_on_the_way_down_wins() {
        let root = std::env::temp_dir().join(format!("sidegate-cpus-{}", std::process::id()));
        let leaf = root.join("system.slice/sidegate.service");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(root.join("system.slice/cpu.max"), "300000 100000\n").unwrap();
        std::fs::write(leaf.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(
            quota_along(&root, "/system.slice/sidegate.service"),
            Some(3)
        );
        std::fs::write(leaf.join("cpu.max"), "50000 100000\n").unwrap();
        assert_eq!(
            quota_along(&root, "/system.slice/sidegate.service"),
            Some(1)
        );
        assert_eq!(quota_along(&root, "/elsewhere"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_default_is_between_one_and_four() {
        let n = default_threads();
        assert!((1..=DEFAULT_MAX_THREADS).contains(&n), "{n}");
        assert_eq!(n, usable_cpus().clamp(1, DEFAULT_MAX_THREADS));
        // This process may use no more CPUs than the machine has.
        let online = std::thread::available_parallelism().map_or(1, usize::from);
        assert!(
            usable_cpus() <= online.max(1),
            "{} > {online}",
            usable_cpus()
        );
    }
}
