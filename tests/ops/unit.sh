#!/usr/bin/env bash
# Checks config/sidegate.service the way systemd will read it, alone and with the drop-in for
# ports below 1024 (config/sidegate-privileged-ports.conf):
#   systemd-analyze verify    the unit parses, its directives and commands are valid;
#   systemd-analyze security  exposure at most 2.5 ("OK"), offline, from the files themselves.
# Usage: tests/ops/unit.sh PATH-TO-BUILT-SIDEGATE
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(realpath "${1:?usage: $0 path/to/sidegate}")
unit=config/sidegate.service
socket=config/sidegate.socket
drop_in=config/sidegate-privileged-ports.conf
max_exposure=25   # tenths: systemd-analyze's --threshold scale (2.5 shown)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fail() {
    echo "unit.sh: $*" >&2
    exit 1
}

# systemctl reload only signals the process: a broken file must reach sidegate, which logs it,
# counts it and keeps running (a `sidegate check` before the kill would stop it short).
reload=$(sed -n 's/^ExecReload=//p' "$unit")
[ "$reload" = '/bin/kill -HUP $MAINPID' ] || fail "ExecReload must be only /bin/kill -HUP \$MAINPID, is: $reload"

# verify insists that ExecStart's binary exists; the package installs it at /usr/bin/sidegate.
# Check a copy that differs only in that path, pointing at the binary just built. systemd reads
# drop-ins from NAME.service.d/ beside the unit file, here as under /etc/systemd/system.
copy() { # directory [drop-in]
    mkdir -p "$1"
    sed "s|/usr/bin/sidegate|$bin|g" "$unit" >"$1/sidegate.service"
    if ! diff <(sed "s|$bin|/usr/bin/sidegate|g" "$1/sidegate.service") "$unit" >/dev/null; then
        fail "the copy differs in more than the binary's path"
    fi
    if [ -n "${2:-}" ]; then
        install -D -m 0644 "$2" "$1/sidegate.service.d/privileged-ports.conf"
    fi
}
verify() { # directory, what
    local out
    out=$(systemd-analyze verify --man=no "$1/sidegate.service" 2>&1) || {
        echo "$out" >&2
        fail "systemd-analyze verify failed ($2)"
    }
    # verify exits 0 on some warnings (an unknown directive, a bad value); none is accepted.
    [ -z "$out" ] || {
        echo "$out" >&2
        fail "systemd-analyze verify warned ($2)"
    }
}
# Prints the report; offline mode reads the files as given (systemd >= 250).
security() { # directory, what
    local report
    if ! report=$(systemd-analyze security --offline=yes --threshold=$max_exposure "$1/sidegate.service" 2>&1); then
        echo "$report" >&2
        fail "exposure above 2.${max_exposure#2} ($2)"
    fi
    echo "$report"
}

copy "$scratch/plain"
verify "$scratch/plain" "$unit"
# The socket-activation example, beside the service it starts.
cp "$socket" "$scratch/plain/sidegate.socket"
verify_socket() {
    local out
    out=$(systemd-analyze verify --man=no "$scratch/plain/sidegate.socket" 2>&1) || {
        echo "$out" >&2
        fail "systemd-analyze verify failed ($socket)"
    }
    [ -z "$out" ] || {
        echo "$out" >&2
        fail "systemd-analyze verify warned ($socket)"
    }
}
verify_socket
# The fd store keeps the listeners across restarts; without it they are refused meanwhile.
grep -q '^FileDescriptorStoreMax=[1-9]' "$unit" || fail "$unit must enable the fd store (FileDescriptorStoreMax=)"
copy "$scratch/ports" "$drop_in"
verify "$scratch/ports" "$unit with $drop_in"

# The user the unit names comes from config/sidegate.sysusers: create it in a scratch root.
mkdir -p "$scratch/root/etc"
# (An absolute path: with --root, a relative one is looked up inside the root.)
out=$(systemd-sysusers --root="$scratch/root" "$PWD/config/sidegate.sysusers" 2>&1) || {
    echo "$out" >&2
    exit 1
}
user=$(sed -n 's/^User=//p' "$unit")
group=$(sed -n 's/^Group=//p' "$unit")
grep -q "^$user:" "$scratch/root/etc/passwd" && grep -q "^$group:" "$scratch/root/etc/group" ||
    fail "config/sidegate.sysusers does not create $user:$group"

plain=$(security "$scratch/plain" "$unit")
echo "$plain" | grep -q '✓ CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE' ||
    fail "$unit alone must not grant CAP_NET_BIND_SERVICE"
echo "$plain" | tail -1
ports=$(security "$scratch/ports" "$unit with $drop_in")
# The report must show the drop-in applied, or the check above proved nothing about it.
echo "$ports" | grep -q '✗ CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE' ||
    fail "$drop_in was not applied: CAP_NET_BIND_SERVICE is not granted"
echo "$ports" | tail -1
echo "unit.sh: $unit verified, alone and with $drop_in; $socket verified"
