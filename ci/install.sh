#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Install vhost-netmem under a prefix, where a distribution puts each part:
#
#   PREFIX/bin/vhost-netmem                             the release binary
#   PREFIX/lib/systemd/system/vhost-netmem@.{service,socket}
#   PREFIX/lib/sysusers.d/vhost-netmem.conf             the user the service drops to
#   PREFIX/share/qemu/vhost-user/50-vhost-netmem.json   QEMU's backend description
#
# with the binary's installed path filled into the unit and the JSON file.
#
#   bash ci/install.sh --prefix /usr/local               (builds the release binary)
#   bash ci/install.sh --prefix DIR --binary PATH        (installs PATH instead)
#   bash ci/install.sh --prefix DIR --destdir STAGING    (paths name PREFIX, files go
#                                                         to STAGING/PREFIX: packaging)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

prefix=""
binary=""
destdir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
        --binary=*) binary="${1#--binary=}"; shift ;;
        --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
        --destdir=*) destdir="${1#--destdir=}"; shift ;;
        -h|--help) usage ;;
        *) echo "ci/install.sh: unknown argument: $1" >&2; usage ;;
    esac
done
[ -n "$prefix" ] || { echo "ci/install.sh: --prefix DIR is required" >&2; usage; }
case "$prefix" in
    /*) ;;
    *) prefix="$(pwd)/$prefix" ;;
esac
prefix="${prefix%/}"

if [ -z "$binary" ]; then
    cargo build --release --locked --bin vhost-netmem
    binary=target/release/vhost-netmem
fi
[ -x "$binary" ] || { echo "ci/install.sh: $binary is not an executable" >&2; exit 1; }

bindir="$prefix/bin"
root="${destdir%/}$prefix"
fill() { sed "s|@BINDIR@|$bindir|g" "$1"; }

install -d "$root/bin" "$root/lib/systemd/system" "$root/lib/sysusers.d" \
    "$root/share/qemu/vhost-user"
install -m 0755 "$binary" "$root/bin/vhost-netmem"
for unit in vhost-netmem@.service vhost-netmem@.socket; do
    fill "contrib/systemd/$unit" > "$root/lib/systemd/system/$unit"
    chmod 0644 "$root/lib/systemd/system/$unit"
done
install -m 0644 contrib/systemd/vhost-netmem.sysusers "$root/lib/sysusers.d/vhost-netmem.conf"
fill contrib/50-vhost-netmem.json.in > "$root/share/qemu/vhost-user/50-vhost-netmem.json"
chmod 0644 "$root/share/qemu/vhost-user/50-vhost-netmem.json"

if grep -rq '@BINDIR@' "$root/lib/systemd/system" "$root/share/qemu/vhost-user"; then
    echo "ci/install.sh: a placeholder was left unfilled" >&2
    exit 1
fi
echo "installed vhost-netmem under $root"
