#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# CI check of the install step: build the release binary, install it with
# ci/install.sh into a clean, fresh prefix, and check what landed there: the binary
# runs (--print-capabilities), vhost-user.json names it, and systemd-analyze verify
# accepts the units (an instance of each template, as systemd loads them).
#
#   bash ci/install-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="$(mktemp -d "${TMPDIR:-/tmp}/vnm-install.XXXXXX")"
units="$(mktemp -d "${TMPDIR:-/tmp}/vnm-units.XXXXXX")"
trap 'rm -rf -- "$prefix" "$units"' EXIT
rmdir "$prefix" # install.sh must create it

bash ci/install.sh --prefix "$prefix"

fail() { echo "ci/install-check.sh: $*" >&2; exit 1; }
for f in bin/vhost-netmem lib/systemd/system/vhost-netmem@.service \
    lib/systemd/system/vhost-netmem@.socket lib/sysusers.d/vhost-netmem.conf \
    share/qemu/vhost-user/50-vhost-netmem.json; do
    [ -f "$prefix/$f" ] || fail "$f not installed"
done
"$prefix/bin/vhost-netmem" --print-capabilities | grep -q '"type": "net"' ||
    fail "the installed binary does not print its capabilities"
grep -q "\"binary\": \"$prefix/bin/vhost-netmem\"" \
    "$prefix/share/qemu/vhost-user/50-vhost-netmem.json" ||
    fail "vhost-user.json does not name the installed binary"
grep -q "^ExecStart=$prefix/bin/vhost-netmem " "$prefix/lib/systemd/system/vhost-netmem@.service" ||
    fail "the service does not start the installed binary"

command -v systemd-analyze >/dev/null || apt-get install -y -qq systemd >/dev/null
for kind in service socket; do
    cp "$prefix/lib/systemd/system/vhost-netmem@.$kind" "$units/"
    ln -s "vhost-netmem@.$kind" "$units/vhost-netmem@vm1.$kind"
done
out="$(systemd-analyze verify --man=no "$units/vhost-netmem@vm1.socket" \
    "$units/vhost-netmem@vm1.service" 2>&1)" || fail "systemd-analyze verify: $out"
if grep -q vhost-netmem <<<"$out"; then
    fail "systemd-analyze verify: $out"
fi
echo "install check passed ($prefix)"
