#!/usr/bin/env bash
# Debian packages of the static binaries, one per architecture:
#
#   cross/deb.sh [TRIPLE...]      default: every target of cross/build.sh
#
# Builds each binary first (cross/build.sh, a no-op when up to date), then writes
# $CARGO_TARGET_DIR/deb/sidegate_<version>_<arch>.deb with dpkg-deb: /usr/bin/sidegate, the
# systemd unit and its sysusers.d user, the gateway example as the conffile
# /etc/sidegate/sidegate.toml (every example under /usr/share/doc/sidegate/examples),
# /var/lib/sidegate and the maintainer scripts of cross/deb/. The binary is static, so the
# package depends on nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/targets.sh

targets=("$@")
((${#targets[@]})) || targets=("${CROSS_DEFAULT_TARGETS[@]}")
cross/build.sh "${targets[@]}"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
out="${CARGO_TARGET_DIR:-target}/deb"
mkdir -p "$out"

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
    install -D -m 0644 config/sidegate.sysusers "$root/usr/lib/sysusers.d/sidegate.conf"
    install -D -m 0644 config/gateway.toml "$root/etc/sidegate/sidegate.toml"
    install -d -m 0700 "$root/var/lib/sidegate"
    install -d -m 0755 "$root/usr/share/doc/sidegate/examples"
    install -m 0644 config/*.toml "$root/usr/share/doc/sidegate/examples/"
    install -m 0644 config/sidegate-privileged-ports.conf "$root/usr/share/doc/sidegate/examples/"
    install -m 0644 README.md "$root/usr/share/doc/sidegate/README.md"
    printf 'sidegate\nLicense: MPL-2.0 (see /usr/share/common-licenses/MPL-2.0)\n' \
        >"$root/usr/share/doc/sidegate/copyright"
    install -d -m 0755 "$root/DEBIAN"
    install -m 0755 cross/deb/postinst cross/deb/prerm cross/deb/postrm "$root/DEBIAN/"
    echo /etc/sidegate/sidegate.toml >"$root/DEBIAN/conffiles"
    cat >"$root/DEBIAN/control" <<EOF
Package: sidegate
Version: $version
Architecture: $arch
Maintainer: sidegate developers <sidegate@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Section: net
Priority: optional
Description: small static Consul service-mesh sidecar and mesh gateway
 One static binary doing, on a Consul service-mesh node, the jobs Consul
 normally hands to Envoy: an SNI-routing mesh gateway that does not decrypt,
 sidecar upstream listeners with mTLS origination, and an inbound mTLS
 listener with intentions. Built for ARM edge hosts run under systemd.
EOF
    deb="$out/sidegate_${version}_${arch}.deb"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
    rm -rf "$root"
    trap - EXIT
    echo "deb: $deb ($(stat -c %s "$deb") bytes)" >&2
done
