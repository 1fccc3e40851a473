#!/usr/bin/env bash
# Debian packages of the static binaries, one per architecture:
#
#   cross/deb.sh [TRIPLE...]      default: every target of cross/build.sh
#
# Builds each binary first (cross/build.sh, a no-op when up to date), then writes
# $CARGO_TARGET_DIR/deb/sidegate_<version>-<n>_<arch>.deb with dpkg-deb: /usr/bin/sidegate, the
# systemd unit, the sidegate@.service template made from it (one sidegate per
# /etc/sidegate/NAME.toml) and its sysusers.d user, the gateway example as the conffile
# /etc/sidegate/sidegate.toml (every example, the alert rules and the dashboard under
# /usr/share/doc/sidegate/examples), /var/lib/sidegate, the man page, bash completion, the
# Debian changelog, a DEP-5 copyright file generated from `cargo metadata` for the crates
# linked into this target's binary (cross/deb/copyright.py) and the maintainer scripts of
# cross/deb/. The binary is static, so the package depends on nothing; tests/deb.sh installs
# the amd64 one and runs lintian on it.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/targets.sh

targets=("$@")
((${#targets[@]})) || targets=("${CROSS_DEFAULT_TARGETS[@]}")
cross/build.sh "${targets[@]}"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
out="${CARGO_TARGET_DIR:-target}/deb"
mkdir -p "$out"
# The package's version and maintainer are the changelog's newest entry: <Cargo version>-<n>,
# n counting packagings of that version (a Debian revision, so the changelog is
# changelog.Debian.gz as Policy names it). A release bumps both files.
debversion="$(sed -n '1s/^sidegate (\([^)]*\)).*/\1/p' cross/deb/changelog)"
maintainer="$(sed -n 's/^ -- \(.*>\)  .*/\1/p' cross/deb/changelog | head -1)"
if [ "${debversion%-*}" != "$version" ] || [ "$debversion" = "$version" ] || [ -z "$maintainer" ]; then
    echo "deb: cross/deb/changelog's newest entry ($debversion) must be $version-<n>, with a maintainer" >&2
    exit 65
fi
command -v python3 >/dev/null || cross_apt python3 # cross/deb/copyright.py

# sidegate@NAME.service: the packaged unit with its file and state directory per instance.
# Made from sidegate.service so that the two cannot drift apart.
template_unit() {
    {
        echo "# sidegate@NAME.service: one more sidegate on /etc/sidegate/NAME.toml, with its own"
        echo "# state directory /var/lib/sidegate-NAME (made by cross/deb.sh from sidegate.service;"
        echo "# everything said below holds per instance). systemctl enable --now sidegate@NAME"
        echo "#"
        sed -e 's|^Description=\(.*\)$|Description=\1, /etc/sidegate/%i.toml|' \
            -e 's|--config /etc/sidegate/sidegate.toml$|--config /etc/sidegate/%i.toml|' \
            -e 's|^StateDirectory=sidegate$|StateDirectory=sidegate-%i|' config/sidegate.service
    } >"$1"
    for line in 'ExecStart=/usr/bin/sidegate run --config /etc/sidegate/%i.toml' \
        'StateDirectory=sidegate-%i'; do
        grep -qxF "$line" "$1" || { echo "deb: the template unit lacks $line" >&2 && exit 70; }
    done
}

for target in "${targets[@]}"; do
    case "$target" in
    aarch64-*) arch=arm64 ;;
    armv7-*) arch=armhf ;;
    x86_64-*) arch=amd64 ;;
    *) echo "deb: no Debian architecture for $target" >&2 && exit 64 ;;
    esac
    root="$(mktemp -d)"
    chmod 0755 "$root" # mktemp makes it private; it becomes the package's "./"
    trap 'rm -rf "$root"' EXIT
    install -D -m 0755 "$(cross_binary "$target")" "$root/usr/bin/sidegate"
    install -D -m 0644 config/sidegate.service "$root/usr/lib/systemd/system/sidegate.service"
    template_unit "$root/usr/lib/systemd/system/sidegate@.service"
    chmod 0644 "$root/usr/lib/systemd/system/sidegate@.service"
    install -D -m 0644 config/sidegate.sysusers "$root/usr/lib/sysusers.d/sidegate.conf"
    install -D -m 0644 config/gateway.toml "$root/etc/sidegate/sidegate.toml"
    install -d -m 0700 "$root/var/lib/sidegate"
    install -d -m 0755 "$root/usr/share/doc/sidegate/examples"
    install -m 0644 config/*.toml "$root/usr/share/doc/sidegate/examples/"
    install -m 0644 config/sidegate-privileged-ports.conf config/alerts.yml \
        config/grafana-dashboard.json "$root/usr/share/doc/sidegate/examples/"
    install -m 0644 README.md "$root/usr/share/doc/sidegate/README.md"
    python3 cross/deb/copyright.py "$target" >"$root/usr/share/doc/sidegate/copyright"
    chmod 0644 "$root/usr/share/doc/sidegate/copyright"
    # Compressed as Debian policy asks, without a name or time stamp (reproducible).
    gzip -9n <cross/deb/changelog >"$root/usr/share/doc/sidegate/changelog.Debian.gz"
    install -d -m 0755 "$root/usr/share/man/man1"
    gzip -9n <cross/deb/sidegate.1 >"$root/usr/share/man/man1/sidegate.1.gz"
    install -D -m 0644 cross/deb/bash-completion \
        "$root/usr/share/bash-completion/completions/sidegate"
    install -D -m 0644 cross/deb/lintian-overrides "$root/usr/share/lintian/overrides/sidegate"
    chmod 0644 "$root"/usr/share/doc/sidegate/changelog.Debian.gz "$root"/usr/share/man/man1/*
    install -d -m 0755 "$root/DEBIAN"
    install -m 0755 cross/deb/preinst cross/deb/postinst cross/deb/prerm cross/deb/postrm \
        "$root/DEBIAN/"
    echo /etc/sidegate/sidegate.toml >"$root/DEBIAN/conffiles"
    # dpkg --verify and debsums compare installed files with these; conffiles are not listed
    # (dpkg keeps their sums itself), as dh_md5sums does.
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
        xargs -0 md5sum | grep -v '  etc/sidegate/sidegate.toml$') >"$root/DEBIAN/md5sums"
    chmod 0644 "$root/DEBIAN/md5sums"
    cat >"$root/DEBIAN/control" <<EOF
Package: sidegate
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Section: net
Priority: optional
Description: small static Consul service-mesh sidecar and mesh gateway
 One static binary doing, on a Consul service-mesh node, the jobs Consul
 normally hands to Envoy: an SNI-routing mesh gateway that does not decrypt,
 sidecar upstream listeners with mTLS origination, and an inbound mTLS
 listener with intentions. Built for ARM edge hosts run under systemd.
EOF
    deb="$out/sidegate_${debversion}_${arch}.deb"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
    rm -rf "$root"
    trap - EXIT
    echo "deb: $deb ($(stat -c %s "$deb") bytes)" >&2
done
