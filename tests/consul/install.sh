#!/usr/bin/env bash
# Installs Debian's `consul` 1.8.7 package from the bullseye suite when no `consul` is on the
# PATH, for the tests that run real Consul agents. Bookworm and later ship no consul, so the
# package comes from bullseye, on the mirror this machine's apt sources already use (read
# from them, never written here); its dependencies come from the machine's own suites. Only
# that one package is taken from bullseye, and bullseye is never added to the machine's
# sources.
set -euo pipefail

want="1.8.7"
installed() { [ "$(consul version 2>/dev/null | head -n1)" = "Consul v$want" ]; }
if command -v consul >/dev/null; then
    # An operator's own consul is left alone; the tests were written against 1.8.7.
    installed || echo "tests/consul/install.sh: using $(consul version | head -n1), not v$want" >&2
    exit 0
fi

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

# The Debian archive mirror of the machine's main suite (its codename), from deb822 `.sources`
# files or one-line `sources.list` entries; the security archive carries no consul.
mirror() {
    local codename
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    local files=()
    for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && files+=("$f"); done
    if ((${#files[@]})); then
        # One stanza per paragraph: print its first URI when its suites hold the codename.
        awk -v code="$codename" '
            function flush() { if (uri != "" && has) { print uri; found = 1; exit } uri = ""; has = 0 }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == code) has = 1 }
            END { if (!found) flush() }
        ' "${files[@]}"
    fi
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI suite components
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
            awk -v code="$codename" '$1 == "deb" && $3 == code { print $2 }'
    done
}
# sed reads to the end: head would quit after one line, and a later write from `mirror`
# would then die of SIGPIPE, which pipefail turns into this script failing.
uri="$(mirror | sed -n 1p)"
if [ -z "$uri" ]; then
    echo "tests/consul/install.sh: no Debian mirror found in the apt sources" >&2
    exit 1
fi
uri="${uri%/}"
echo "tests/consul/install.sh: consul $want from bullseye on $uri"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri bullseye main" \
    >"$work/bullseye.list"
# Own source list and index directory: the machine's apt state is left as it was.
bullseye=(-o "Dir::Etc::sourcelist=$work/bullseye.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "APT::Get::List-Cleanup=0")
# As root apt drops to its `_apt` user to download, which cannot write into our directory.
[ "$(id -u)" -ne 0 ] || bullseye+=(-o "APT::Sandbox::User=root")
apt-get -qq "${bullseye[@]}" update
(cd "$work" && apt-get -qq "${bullseye[@]}" download "consul=$want*")
deb="$(ls "$work"/consul_"$want"*.deb)"
# Dependencies (pipexec, adduser, ...) from the machine's own suites. The package's service
# is installed disabled, so no agent starts.
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$deb"
installed || {
    echo "tests/consul/install.sh: installed consul is not $want:" >&2
    consul version >&2
    exit 1
}
