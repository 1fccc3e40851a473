#!/usr/bin/env bash
# The amd64 package as an operator meets it, installed by dpkg into a scratch root (never this
# machine's own): files, modes and owners, the conffile, the shipped configuration valid, and the
# maintainer scripts on install, reinstall, remove and purge. dpkg runs the scripts outside a
# chroot with DPKG_ROOT set (--force-script-chrootless), as image builders do; a systemctl that
# fails the test if called proves they leave the host's systemd alone there.
#
# Then lintian (no errors; installed when missing), the documentation the package carries
# (changelog, DEP-5 copyright of the linked crates, man page, bash completion), the
# sidegate@.service template, and the preinst refusing ARMv6 boards for armhf.
#
#   tests/deb.sh [PACKAGE.deb]     default: $CARGO_TARGET_DIR/deb/sidegate_<version>-<n>_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/.."

# The Debian version: the newest entry of the package's changelog (cross/deb.sh).
version="$(sed -n '1s/^sidegate (\([^)]*\)).*/\1/p' cross/deb/changelog)"
deb="${1:-${CARGO_TARGET_DIR:-target}/deb/sidegate_${version}_amd64.deb}"
[ -f "$deb" ] || { echo "deb: $deb missing (cross/deb.sh builds it)" >&2; exit 1; }

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
root="$scratch/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/log" "$scratch/bin"
touch "$root/var/lib/dpkg/status"
printf '#!/bin/sh\necho "systemctl $*" >>"%s/systemctl.calls"\nexit 1\n' "$scratch" >"$scratch/bin/systemctl"
chmod +x "$scratch/bin/systemctl"

fakeroot=()
if [ "$(id -u)" -ne 0 ]; then
    # dpkg and the scripts set owners; as a user, fakeroot pretends, and keeps what it pretended
    # in a state file so that the checks below see the same owners.
    command -v fakeroot >/dev/null || (source cross/targets.sh && cross_apt fakeroot)
    touch "$scratch/fakeroot.state"
    fakeroot=(fakeroot -i "$scratch/fakeroot.state" -s "$scratch/fakeroot.state")
fi
dpkg_in_root() {
    PATH="$scratch/bin:$PATH" "${fakeroot[@]}" dpkg --root="$root" --log="$root/var/log/dpkg.log" \
        --force-script-chrootless --force-not-root "$@"
}
fails=0
check() { # description, command...
    local what="$1"
    shift
    if "$@"; then echo "deb: ok: $what"; else echo "deb: FAILED: $what" >&2; fails=1; fi
}
not() { ! "$@"; }
# Numeric owners: the scratch root's user is not in this machine's databases.
mode_owner() { [ "$("${fakeroot[@]}" stat -c '%a %u:%g' "$root/$1")" = "$2" ]; }
id_in_root() { awk -F: -v n="$2" '$1 == n { print $3 }' "$root/etc/$1"; }
status() { dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${db:Status-Abbrev}' sidegate 2>/dev/null; }

echo "deb: installing $deb into $root"
dpkg_in_root -i "$deb" >"$scratch/install.out"
uid="$(id_in_root passwd sidegate)"
gid="$(id_in_root group sidegate)"
check "installed" [ "$(status)" = "ii " ]
check "system user and group sidegate created from sysusers.d" [ -n "$uid" -a -n "$gid" ]
check "/usr/bin/sidegate 0755 root" mode_owner usr/bin/sidegate "755 0:0"
check "unit 0644 root" mode_owner usr/lib/systemd/system/sidegate.service "644 0:0"
check "sysusers.d entry 0644 root" mode_owner usr/lib/sysusers.d/sidegate.conf "644 0:0"
check "config dir 0750 root:sidegate" mode_owner etc/sidegate "750 0:$gid"
check "config 0640 root:sidegate" mode_owner etc/sidegate/sidegate.toml "640 0:$gid"
check "state dir 0700 sidegate" mode_owner var/lib/sidegate "700 $uid:$gid"
check "the unit runs as that user" grep -qx "User=sidegate" \
    "$root/usr/lib/systemd/system/sidegate.service"
check "binary is the static x86_64 musl build" \
    grep -q x86_64-unknown-linux-musl <("$root/usr/bin/sidegate" --version)
valid() { "$root/usr/bin/sidegate" check --config "$1" >/dev/null; }
check "shipped configuration is valid" valid "$root/etc/sidegate/sidegate.toml"
check "unit runs the binary on the shipped configuration" grep -qx \
    'ExecStart=/usr/bin/sidegate run --config /etc/sidegate/sidegate.toml' \
    "$root/usr/lib/systemd/system/sidegate.service"
check "dpkg --verify finds every installed file as shipped (md5sums)" \
    [ -s "$root/var/lib/dpkg/info/sidegate.md5sums" \
    -a -z "$("${fakeroot[@]}" dpkg --root="$root" --verify sidegate 2>&1)" ]
check "config is a conffile" grep -q /etc/sidegate/sidegate.toml \
    <(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Conffiles}' sidegate)
check "no dependencies (static binary)" [ -z "$(dpkg-deb -f "$deb" Depends Pre-Depends)" ]
check "postinst tells what to do on first install" grep -q "systemctl enable --now" "$scratch/install.out"

# An operator's edits and state survive a reinstall (postinst configure with the old version).
echo "# edited" >>"$root/etc/sidegate/sidegate.toml"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -s /usr/lib/systemd/system/sidegate.service "$root/etc/systemd/system/multi-user.target.wants/"
echo state >"$root/var/lib/sidegate/last-known-good.json"
dpkg_in_root --force-confold -i "$deb" >"$scratch/reinstall.out"
check "reinstalled" [ "$(status)" = "ii " ]
check "reinstall keeps the edited conffile" grep -qx "# edited" "$root/etc/sidegate/sidegate.toml"
check "reinstall prints no first-install note" not grep -q "systemctl enable" "$scratch/reinstall.out"

dpkg_in_root -r sidegate >/dev/null
check "removed" [ "$(status)" = "rc " ]
check "remove takes the binary" [ ! -e "$root/usr/bin/sidegate" ]
check "remove takes the unit" [ ! -e "$root/usr/lib/systemd/system/sidegate.service" ]
check "remove keeps the configuration" [ -f "$root/etc/sidegate/sidegate.toml" ]
check "remove keeps the state" [ -f "$root/var/lib/sidegate/last-known-good.json" ]

# An instance an operator made: its enablement link and state go with a purge too.
ln -s /usr/lib/systemd/system/sidegate@.service \
    "$root/etc/systemd/system/multi-user.target.wants/sidegate@edge.service"
mkdir -p "$root/var/lib/sidegate-edge"
dpkg_in_root -P sidegate >/dev/null
check "purged" [ -z "$(status)" ]
check "purge takes an instance's enablement link and state" \
    [ ! -L "$root/etc/systemd/system/multi-user.target.wants/sidegate@edge.service" \
    -a ! -e "$root/var/lib/sidegate-edge" ]
check "purge leaves no mask behind" [ ! -L "$root/etc/systemd/system/sidegate.service" ]
check "purge takes the configuration" [ ! -e "$root/etc/sidegate/sidegate.toml" ]
check "purge takes the state" [ ! -e "$root/var/lib/sidegate" ]
check "purge takes the enablement link" \
    [ ! -L "$root/etc/systemd/system/multi-user.target.wants/sidegate.service" ]

check "maintainer scripts never called systemctl in another root" [ ! -e "$scratch/systemctl.calls" ]
for script in cross/deb/preinst cross/deb/postinst cross/deb/prerm cross/deb/postrm; do
    check "$script is POSIX sh" sh -n "$script"
    check "$script leaves systemctl to deb-systemd-invoke (daemon-reload aside)" \
        not grep -En '^[[:space:]]*systemctl[[:space:]]+(--[a-z]+[[:space:]]+)*(start|stop|restart|try-restart|reload|enable|disable|mask)' "$script"
done

# What the package carries besides the binary, unpacked as it ships.
files="$scratch/files"
dpkg-deb -x "$deb" "$files"
doc="$files/usr/share/doc/sidegate"
check "changelog.Debian.gz starts at this version" \
    grep -q "^sidegate ($version) " <(zcat "$doc/changelog.Debian.gz")
check "copyright is machine-readable (DEP-5)" grep -qx \
    'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' "$doc/copyright"
# The crates in the binary: every normal dependency of the musl target's build, no proc-macro
# (build-time) and no dev-dependency.
crates() { grep -c '^Files: vendor/' "$doc/copyright"; }
check "copyright names the linked crates (rustls, ring, smol, ...; $(crates))" \
    grep -q '^Files: vendor/rustls-0' "$doc/copyright"
for crate in ring smol ureq serde x509-parser; do
    check "copyright names $crate" grep -q "^Files: vendor/$crate-[0-9]" "$doc/copyright"
done
for crate in serde_derive thiserror-impl rcgen cc; do
    check "copyright leaves out $crate (build time or tests only)" \
        not grep -q "^Files: vendor/$crate-[0-9]" "$doc/copyright"
done
check "copyright lists musl and Rust's std, linked statically" \
    grep -q '^Files: musl/\*' "$doc/copyright"
man_warnings() {
    LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$files/usr/share/man/man1/sidegate.1.gz" 2>&1 >/dev/null
}
check "man page sidegate(1) renders without warnings" [ -z "$(man_warnings)" ]
check "man page documents every command" grep -q 'sidegate explain' \
    <(LC_ALL=C.UTF-8 MANWIDTH=200 man -l "$files/usr/share/man/man1/sidegate.1.gz" 2>/dev/null)
complete_words() { # words typed so far, the last one being completed
    bash -c 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _sidegate
             printf "%s\n" "${COMPREPLY[@]}"' _ \
        "$files/usr/share/bash-completion/completions/sidegate" "$@" | sort | tr '\n' ' '
}
check "bash completes commands" [ "$(complete_words sidegate ch)" = "check " ]
check "bash completes check's options" [ "$(complete_words sidegate check --)" = "--config --json " ]
check "bash completes --config with .toml files" \
    grep -q 'config/gateway.toml' <(complete_words sidegate run --config config/g)
unit="$files/usr/lib/systemd/system"
check "template unit: one instance per /etc/sidegate/NAME.toml, own state directory" \
    [ "$(diff "$unit/sidegate.service" "$unit/sidegate@.service" | grep -c '^>')" -eq 7 ]
check "template unit runs NAME.toml" grep -qx \
    'ExecStart=/usr/bin/sidegate run --config /etc/sidegate/%i.toml' "$unit/sidegate@.service"
check "template unit has StateDirectory=sidegate-%i" \
    grep -qx 'StateDirectory=sidegate-%i' "$unit/sidegate@.service"

# The preinst on an armhf install, with uname answering for the board.
preinst_on() { # DPKG_MAINTSCRIPT_ARCH, uname -m
    mkdir -p "$scratch/uname-$2"
    printf '#!/bin/sh\necho %s\n' "$2" >"$scratch/uname-$2/uname"
    chmod +x "$scratch/uname-$2/uname"
    PATH="$scratch/uname-$2:$PATH" DPKG_MAINTSCRIPT_ARCH="$1" sh cross/deb/preinst install \
        2>"$scratch/preinst.err"
}
check "preinst refuses armhf on ARMv6, saying why" \
    eval 'not preinst_on armhf armv6l && grep -q "needs ARMv7" "$scratch/preinst.err"'
check "preinst installs armhf on ARMv7" preinst_on armhf armv7l
check "preinst ignores the CPU for other architectures" preinst_on arm64 armv6l

# lintian, as Debian's archive would run it (errors fail; overrides, each with its reason, in
# cross/deb/lintian-overrides).
command -v lintian >/dev/null || (source cross/targets.sh && cross_apt lintian)
lintian --pedantic --fail-on error "$deb" >"$scratch/lintian.out" 2>&1 || true
sed 's/^/deb: lintian: /' "$scratch/lintian.out"
check "lintian reports no errors" lintian --fail-on error "$deb"
# The boards' packages, built beside it by cross/deb.sh: the same archive checks (lintian reads
# a foreign architecture's binary as well; it does not run it).
for arch in arm64 armhf; do
    other="$(dirname "$deb")/sidegate_${version}_${arch}.deb"
    if [ -f "$other" ]; then
        check "lintian reports no errors on the $arch package" lintian --fail-on error "$other"
    else
        echo "deb: no $arch package beside $deb (cross/deb.sh builds all three)" >&2
        fails=$((fails + 1))
    fi
done
exit $fails
