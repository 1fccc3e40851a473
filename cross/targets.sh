# Sourced by the scripts of cross/ and tests/run.sh: what each supported target needs, in one
# place.
#
#   cross_install TRIPLE   installs the target's toolchain pieces when missing (rustup, apt)
#   cross_env TRIPLE       exports the linker, C compiler, archiver, runner and flags for cargo,
#                          and sets the arrays CARGO (the cargo command) and ZFLAGS
#
# Settings travel as environment variables rather than a checked-in .cargo/config.toml: the
# host build stays untouched, and the test helper that starts the binary under emulation reads
# the very runner cargo uses (tests/common: sidegate_command).

CROSS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The default set: 64-bit and 32-bit ARM boards, and x86_64 for the same static musl build.
CROSS_DEFAULT_TARGETS=(
    aarch64-unknown-linux-musl
    armv7-unknown-linux-musleabihf
    x86_64-unknown-linux-musl
)

# armv7 musl has no prebuilt std: std is built from rust-src with -Zbuild-std, which needs a
# nightly toolchain. Pinned, so that a new nightly cannot break CI overnight.
CROSS_NIGHTLY="${SIDEGATE_NIGHTLY:-nightly-2026-05-20}"

# Emulated CPUs as on the boards: Raspberry Pi 3/Zero 2-class aarch64, Cortex-A7 armv7.
CROSS_RUNNER_aarch64="qemu-aarch64 -cpu cortex-a53"
CROSS_RUNNER_armv7="qemu-arm -cpu cortex-a7"

cross_apt() { # packages...
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "cross: installing $*" >&2
    # A mirror mid-sync fails one index; what is needed usually still resolves from the rest.
    $sudo apt-get update -qq || echo "cross: apt-get update reported errors; trying anyway" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

cross_rustup_target() {
    rustup target list --installed | grep -qx "$1" || rustup target add "$1"
}

cross_install() {
    local need=()
    command -v readelf >/dev/null || need+=(binutils)
    case "$1" in
    aarch64-unknown-linux-musl)
        cross_rustup_target "$1"
        command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
        command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
        ;;
    armv7-unknown-linux-musleabihf)
        rustup toolchain list | grep -q "^$CROSS_NIGHTLY" ||
            rustup toolchain install "$CROSS_NIGHTLY" --profile minimal --component rust-src
        rustup "+$CROSS_NIGHTLY" component list --installed | grep -q '^rust-src' ||
            rustup "+$CROSS_NIGHTLY" component add rust-src
        command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf)
        command -v qemu-arm >/dev/null || need+=(qemu-user)
        if ! command -v arm-linux-musleabihf-gcc >/dev/null; then
            # musl's armhf libc, crt files and the gcc wrapper come from the armhf package.
            if ! dpkg --print-foreign-architectures | grep -qx armhf; then
                local sudo=""
                [ "$(id -u)" -eq 0 ] || sudo="sudo"
                $sudo dpkg --add-architecture armhf
            fi
            need+=(musl-dev:armhf)
        fi
        ;;
    x86_64-unknown-linux-musl)
        cross_rustup_target "$1"
        command -v cc >/dev/null || need+=(gcc)
        # ring's C is compiled by musl's gcc wrapper, which Debian ships in musl-dev.
        command -v x86_64-linux-musl-gcc >/dev/null || need+=(musl-dev)
        ;;
    *)
        echo "cross: unsupported target $1 (supported: ${CROSS_DEFAULT_TARGETS[*]})" >&2
        return 64
        ;;
    esac
    if ((${#need[@]})); then cross_apt "${need[@]}"; fi
}

cross_env() {
    CARGO=(cargo)
    ZFLAGS=()
    # Every target links through cross/ordered-cc (lld, hot code together), which calls the
    # target's own C compiler driver, SIDEGATE_LINK_CC.
    # Its list names functions as demangled v0 symbols: unlike legacy mangling, v0 spells out
    # a generic function's type arguments, so a name picks one instantiation, not all of them.
    local triple_var rustflags="-C symbol-mangling-version=v0"
    triple_var="$(tr 'a-z-' 'A-Z_' <<<"$1")"
    export "CARGO_TARGET_${triple_var}_LINKER=$CROSS_DIR/ordered-cc"
    case "$1" in
    aarch64-unknown-linux-musl)
        # ring's C is freestanding, so the glibc cross gcc compiles it and drives the link;
        # rust-std ships musl's crt, libc and libunwind for this target.
        export SIDEGATE_LINK_CC=aarch64-linux-gnu-gcc
        export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
        export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER="$CROSS_RUNNER_aarch64"
        ;;
    armv7-unknown-linux-musleabihf)
        CARGO=(cargo "+$CROSS_NIGHTLY")
        ZFLAGS=(-Zbuild-std=std,panic_abort)
        # Debian's musl for armhf brings crt files and libc, so rustc must not look for its
        # own (link-self-contained=no); the wrapper maps -lunwind to gcc's libgcc_eh.
        export SIDEGATE_LINK_CC="$CROSS_DIR/armv7-musl-cc"
        rustflags+=" -C link-self-contained=no"
        export CC_armv7_unknown_linux_musleabihf=arm-linux-musleabihf-gcc
        # cc-rs would otherwise fall back to the host's ar for this target.
        export AR_armv7_unknown_linux_musleabihf=arm-linux-gnueabihf-ar
        export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUNNER="$CROSS_RUNNER_armv7"
        ;;
    x86_64-unknown-linux-musl)
        # cc-rs would look for this name too; said here so a missing wrapper is plain to see.
        export CC_x86_64_unknown_linux_musl=x86_64-linux-musl-gcc
        # rustc hands the link its own musl crt and libc, as for aarch64; the musl gcc wrapper
        # would add a second set.
        export SIDEGATE_LINK_CC=cc
        ;;
    *)
        echo "cross: unsupported target $1 (supported: ${CROSS_DEFAULT_TARGETS[*]})" >&2
        return 64
        ;;
    esac
    export "CARGO_TARGET_${triple_var}_RUSTFLAGS=$rustflags"
}

# The runner for TRIPLE ("" for the host's own architecture).
cross_runner() {
    case "$1" in
    aarch64-*) echo "$CROSS_RUNNER_aarch64" ;;
    armv7-*) echo "$CROSS_RUNNER_armv7" ;;
    *) echo "" ;;
    esac
}

# Where cargo puts TRIPLE's release binary.
cross_binary() {
    echo "${CARGO_TARGET_DIR:-$CROSS_DIR/../target}/$1/release/sidegate"
}
