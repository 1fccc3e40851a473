#!/usr/bin/env bash
# The unit's system-call filter must not take from sidegate a call it makes: a filtered call
# fails with EPERM (SystemCallErrorNumber=), which no test would notice until a device did.
# Runs the operations tests (tests/operations/operations.rs, `operations::` in the operations
# test binary: start, traffic through every role, reloads, drains, the admin endpoint, the
# watchdog) and the restart tests (tests/operations/restarts.rs: sockets taken from LISTEN_FDS,
# handed to the fd store) with each sidegate under `strace -f`, then checks every call made
# against what config/sidegate.service allows, as systemd-analyze expands its groups.
set -euo pipefail
cd "$(dirname "$0")/../.."
traces=$(mktemp -d)
trap 'rm -rf "$traces"' EXIT
SIDEGATE_TEST_STRACE="$traces" cargo test --locked --test operations -- --test-threads=2 operations:: restarts:: >"$traces/test.log" 2>&1 || {
    tail -50 "$traces/test.log" >&2
    echo "syscalls.sh: the operations tests failed under strace" >&2
    exit 1
}
ls "$traces"/trace.* >/dev/null
systemd-analyze syscall-filter --no-pager >"$traces/groups" 2>/dev/null
/usr/bin/python3 - "$traces" config/sidegate.service <<'PY'
import glob, re, sys

traces, unit = sys.argv[1], sys.argv[2]

# Groups as this systemd defines them: "@name" headers, then members (calls or @groups).
groups, current = {}, None
for line in open(f"{traces}/groups"):
    if re.match(r"^@\S+$", line.rstrip()):
        current = groups.setdefault(line.strip(), set())
    elif current is not None and line.strip() and not line.strip().startswith("#"):
        current.add(line.strip())

def expand(names, seen=()):
    out = set()
    for n in names:
        if n.startswith("@"):
            if n not in seen:
                out |= expand(groups[n], seen + (n,))
        else:
            out.add(n)
    return out

allowed, denied = set(), set()
for line in open(unit):
    m = re.match(r"^SystemCallFilter=(~?)(.*)$", line.strip())
    if m:
        (denied if m.group(1) else allowed).update(expand(m.group(2).split()))
permitted = allowed - denied

made = set()
for path in glob.glob(f"{traces}/trace.*"):
    for line in open(path):
        # "<pid> name(args) = ret", "<pid> <... name resumed>", signals and exits skipped.
        m = re.match(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)", line)
        if m:
            made.add(m.group(1))
# execve happens before the filter is installed (systemd applies it to the new process).
made.discard("execve")
refused = sorted(made - permitted)
print(f"syscalls.sh: {len(made)} distinct system calls made, all allowed" if not refused else "")
if refused:
    sys.exit("syscalls.sh: the unit's SystemCallFilter= refuses calls sidegate makes: " + ", ".join(refused))
PY
