#!/usr/bin/env bash
# Writes what the .deb installs beside the binary, into target/assets/: the man pages
# (`roomhook man`, gzipped), the bash, zsh and fish completions (`roomhook completions`),
# and THIRD-PARTY-LICENSES (packaging/third-party.py). Generated from the binary being
# packaged, never kept by hand; run it before `cargo deb --no-build`:
#   cargo build --profile gateway
#   packaging/assets.sh target/gateway/roomhook
#   cargo deb --profile gateway --no-build
# For a cross build, run the target's binary under qemu:
#   packaging/assets.sh dist/roomhook-0.1.0-aarch64-unknown-linux-musl qemu-aarch64
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: packaging/assets.sh BINARY [RUNNER...]}
shift
out=target/assets
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
"$@" "$bin" man "$out/man" >/dev/null
gzip -9n "$out"/man/*
"$@" "$bin" completions bash >"$out/completions/roomhook"
"$@" "$bin" completions zsh >"$out/completions/_roomhook"
"$@" "$bin" completions fish >"$out/completions/roomhook.fish"
# The target of the binary, from its --version line ("…, target TRIPLE, …").
target=$("$@" "$bin" --version | sed -n 's/.*, target \([^,]*\),.*/\1/p')
[ -n "$target" ] || { echo "packaging/assets.sh: no target in \`$bin --version\`" >&2; exit 1; }
python3 packaging/third-party.py "$target" >"$out/THIRD-PARTY-LICENSES"
echo "$out: $(ls "$out/man" | wc -l) man pages, 3 completions, THIRD-PARTY-LICENSES ($target)"
