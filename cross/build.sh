#!/usr/bin/env bash
# Builds stripped roomhook binaries for gateway targets, without Docker.
#
#   cross/build.sh [--profile NAME] [--install] TARGET...
#
# TARGET: aarch64-unknown-linux-musl (static; 64-bit Raspberry Pi OS, most ARM gateways),
#         armv7-unknown-linux-gnueabihf (32-bit boards, glibc 2.36+ as in Debian 12),
#         host (this machine's target).
# --profile: a Cargo profile (default "gateway", what ships; CI builds armv7 with "dev", the
#            same code unoptimised: it builds, links and runs, in less time).
# --install: also install the Debian cross compilers and the Rust standard libraries
#            (needs root and apt); without it, missing ones are named with the command.
# --with-demo: keep the demo (`roomhook demo`, its PKI and device simulator) in the binary;
#            gateway builds leave it out (`roomhook --version` says which).
#
# Linkers and C compilers (ring compiles C) are passed by environment for each target
# only: there is no .cargo/config.toml that could break the host build.
# Results: dist/roomhook-<version>-<target> (stripped), and their sizes on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=gateway
install=false
features=(--no-default-features)
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --install) install=true; shift ;;
    --with-demo) features=(); shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "usage: cross/build.sh [--profile NAME] [--install] TARGET... (see the top of this file)" >&2
  exit 2
fi

host=$(rustc -vV | sed -n 's/^host: //p')
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
mkdir -p dist

# The Debian package and tool prefix that cross-compile for a target.
toolchain() {
  case "$1" in
    aarch64-unknown-linux-musl|aarch64-unknown-linux-gnu) echo "gcc-aarch64-linux-gnu aarch64-linux-gnu libc6-dev-arm64-cross" ;;
    armv7-unknown-linux-gnueabihf) echo "gcc-arm-linux-gnueabihf arm-linux-gnueabihf libc6-dev-armhf-cross" ;;
    armv7-unknown-linux-musleabihf)
      echo "$1: Rust's standard library for this target cannot be installed on these build machines (rustup answers 404); use armv7-unknown-linux-gnueabihf" >&2
      exit 1 ;;
    *) echo "$1: not a target this script knows (aarch64-unknown-linux-musl, armv7-unknown-linux-gnueabihf, host)" >&2; exit 2 ;;
  esac
}

for target in "${targets[@]}"; do
  [ "$target" = host ] && target=$host
  envs=()
  strip=strip
  if [ "$target" != "$host" ]; then
    read -r package prefix headers < <(toolchain "$target")
    if ! grep -qx "$target" < <(rustup target list --installed); then
      if $install; then
        rustup target add "$target"
      else
        echo "$target: the Rust standard library is missing: rustup target add $target (or pass --install)" >&2
        exit 1
      fi
    fi
    if ! command -v "$prefix-gcc" >/dev/null || [ ! -e "/usr/$prefix/include/stdio.h" ]; then
      if $install; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "$package" "$headers" >/dev/null
      else
        echo "$target: the cross compiler or its C library headers are missing: apt-get install $package $headers (or pass --install)" >&2
        exit 1
      fi
    fi
    upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
    lower=$(echo "$target" | tr '-' '_')
    envs=("CARGO_TARGET_${upper}_LINKER=$prefix-gcc" "CC_${lower}=$prefix-gcc" "AR_${lower}=$prefix-ar")
    strip=$prefix-strip
  fi
  echo "building roomhook $version for $target (profile $profile)" >&2
  env "${envs[@]}" cargo build --locked --profile "$profile" --target "$target" "${features[@]}" --bin roomhook
  dir=$profile
  [ "$profile" = dev ] && dir=debug
  out=dist/roomhook-$version-$target
  "$strip" -o "$out" "target/$target/$dir/roomhook"
  size=$(stat -c %s "$out")
  awk -v f="$out" -v s="$size" 'BEGIN { printf "%s\t%d bytes (%.2f MiB)\n", f, s, s / 1048576 }'
done
