#!/usr/bin/env bash
# Installs a roomhook .deb on this machine and checks what an admin relies on, then purges
# it again: the user, the files and their modes, check-config on the installed config,
# systemd-analyze on the installed unit, an upgrade that keeps the store and the config,
# remove that keeps them, purge that removes them and the user. Needs root. CI runs it.
#   packaging/check.sh target/debian/roomhook_0.1.0-1_amd64.deb
set -euo pipefail
deb=${1:?usage: packaging/check.sh PACKAGE.deb}
fail() { echo "packaging/check.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (it installs the package)"
if dpkg -s roomhook >/dev/null 2>&1; then fail "roomhook is installed already; purge it first"; fi

# Whatever fails below, the machine is left without the package.
trap 'dpkg -P roomhook >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb" >/dev/null
getent passwd roomhook >/dev/null || fail "no roomhook user after install"
[ "$(stat -c %a:%U /etc/roomhook/roomhook.toml)" = "640:roomhook" ] || fail "config mode/owner: $(stat -c %a:%U /etc/roomhook/roomhook.toml)"
[ "$(stat -c %U /etc/roomhook)" = roomhook ] || fail "/etc/roomhook not owned by roomhook"
# Root-only secrets: /etc/credstore (root, 0700), and nothing loaded from /etc/roomhook,
# which the service user owns (systemd follows links there as root; README "By hand").
[ "$(stat -c %a:%U /etc/credstore)" = "700:root" ] || fail "/etc/credstore: $(stat -c %a:%U /etc/credstore)"
grep -qx /etc/roomhook/roomhook.toml /var/lib/dpkg/info/roomhook.conffiles || fail "the config is not a conffile"
/usr/bin/roomhook --version
# What a user types finds the pages and the completion.
if command -v man >/dev/null 2>&1; then
  man -w roomhook >/dev/null || fail "man roomhook finds nothing"
  man -w 5 roomhook.toml >/dev/null || fail "man 5 roomhook.toml finds nothing"
  man -w roomhook-webhook-add >/dev/null || fail "man roomhook-webhook-add finds nothing"
fi
[ -f /usr/share/bash-completion/completions/roomhook ] || fail "no bash completion installed"
grep -q "Apache License" /usr/share/doc/roomhook/copyright || fail "the copyright file lacks the license"
/usr/bin/roomhook check-config -c /etc/roomhook/roomhook.toml
unit=$(dpkg -L roomhook | grep '/systemd/system/roomhook.service$') || fail "no unit installed"
systemd-analyze verify "$unit"
if grep -n 'LoadCredential.*/etc/roomhook' "$unit"; then fail "the unit loads credentials from /etc/roomhook, which roomhook owns"; fi
systemd-analyze security --offline=true "$unit" | tail -1

# An upgrade (the same package again) keeps the store and an edited config.
mkdir -p /var/lib/roomhook && echo store > /var/lib/roomhook/marker
chown -R roomhook:roomhook /var/lib/roomhook
sed -i 's/^org_id = "my-org"/org_id = "edited-org"/' /etc/roomhook/roomhook.toml
dpkg -i --force-confold "$deb" >/dev/null
[ -f /var/lib/roomhook/marker ] || fail "the upgrade removed the store"
grep -q edited-org /etc/roomhook/roomhook.toml || fail "the upgrade replaced the edited config"

# Remove keeps config, store and user; purge removes them.
dpkg -r roomhook >/dev/null
[ ! -e /usr/bin/roomhook ] || fail "remove left the binary"
[ -f /var/lib/roomhook/marker ] && [ -f /etc/roomhook/roomhook.toml ] || fail "remove took the store or the config"
getent passwd roomhook >/dev/null || fail "remove took the user"
dpkg -P roomhook >/dev/null
[ ! -e /var/lib/roomhook ] || fail "purge left /var/lib/roomhook"
[ ! -e /etc/roomhook ] || fail "purge left /etc/roomhook"
if getent passwd roomhook >/dev/null; then fail "purge left the roomhook user"; fi
echo "package $deb: install, check-config, unit, upgrade, remove and purge OK"
