#!/usr/bin/env bash
# Checks config/sidegate.service the way systemd will read it:
#   systemd-analyze verify    the unit parses, its directives and commands are valid;
#   systemd-analyze security  exposure at most 2.5 ("OK"), offline, from the file itself.
# Usage: tests/ops/unit.sh PATH-TO-BUILT-SIDEGATE
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(realpath "${1:?usage: $0 path/to/sidegate}")
unit=config/sidegate.service
max_exposure=25   # tenths: systemd-analyze's --threshold scale (2.5 shown)

# systemctl reload only signals the process: a broken file must reach sidegate, which logs it,
# counts it and keeps running (a `sidegate check` before the kill would stop it short).
reload=$(sed -n 's/^ExecReload=//p' "$unit")
if [ "$reload" != '/bin/kill -HUP $MAINPID' ]; then
    echo "unit.sh: ExecReload must be only /bin/kill -HUP \$MAINPID, is: $reload" >&2
    exit 1
fi

# verify insists that ExecStart's binary exists; the package installs it at /usr/bin/sidegate.
# Check a copy that differs only in that path, pointing at the binary just built.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
sed "s|/usr/bin/sidegate|$bin|g" "$unit" >"$scratch/sidegate.service"
if ! diff <(sed "s|$bin|/usr/bin/sidegate|g" "$scratch/sidegate.service") "$unit" >/dev/null; then
    echo "unit.sh: the copy differs in more than the binary's path" >&2
    exit 1
fi
out=$(systemd-analyze verify --man=no "$scratch/sidegate.service" 2>&1) || {
    echo "$out" >&2
    echo "unit.sh: systemd-analyze verify failed" >&2
    exit 1
}
if [ -n "$out" ]; then
    # verify exits 0 on some warnings (an unknown directive, a bad value); none is accepted.
    echo "$out" >&2
    echo "unit.sh: systemd-analyze verify warned" >&2
    exit 1
fi

# The user the unit names comes from config/sidegate.sysusers: create it in a scratch root.
mkdir -p "$scratch/root/etc"
# (An absolute path: with --root, a relative one is looked up inside the root.)
out=$(systemd-sysusers --root="$scratch/root" "$PWD/config/sidegate.sysusers" 2>&1) || {
    echo "$out" >&2
    exit 1
}
user=$(sed -n 's/^User=//p' "$unit")
group=$(sed -n 's/^Group=//p' "$unit")
grep -q "^$user:" "$scratch/root/etc/passwd" && grep -q "^$group:" "$scratch/root/etc/group" || {
    echo "unit.sh: config/sidegate.sysusers does not create $user:$group" >&2
    exit 1
}

# Offline mode reads the file as given (systemd >= 250).
if ! report=$(systemd-analyze security --offline=yes --threshold=$max_exposure "$unit" 2>&1); then
    echo "$report" >&2
    echo "unit.sh: exposure above 2.${max_exposure#2}" >&2
    exit 1
fi
echo "$report" | tail -1
echo "unit.sh: $unit verified"
