#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Guest tests: real QEMU guests run ping and iperf3 through vhost-netmem, beside QEMU's own
# TAP networking, on QEMU 7.2 and QEMU 10.0 (guest-test/README.md). Installs what is
# missing, builds the backend in release mode and runs guest-test/run; arguments are passed
# on to it. QEMU 10.0 is not installed: guest-test/run has guest-test/fetch-qemu unpack it
# from bookworm-backports into guest-test/cache/ on first use. Needs root.
#
#   bash ci/guest-test.sh                  # every scenario on both QEMU versions, ~6.5 minutes
#   bash ci/guest-test.sh --qemu 10.0      # one QEMU version
#   bash ci/guest-test.sh --only basic     # see guest-test/run --help
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "ci/guest-test.sh: must run as root (TAP devices, network namespaces)" >&2
    exit 1
fi

# Debian packages: QEMU, the guest's iperf3 and busybox, the host's ping, ip, ethtool and
# sysctl (the AF_XDP scenario's veth), libvirtd and virsh (the libvirt scenario starts a
# libvirtd of its own and leaves any system libvirt alone).
pkgs=(qemu-system-x86 iperf3 busybox-static iputils-ping iproute2 ethtool procps python3
      libvirt-daemon-system libvirt-clients)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
export DEBIAN_FRONTEND=noninteractive
updated=0
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    updated=1
    apt-get install -y -qq "${missing[@]}"
fi
# The guest kernel is fetched with apt-get download: the package lists must know it.
if [ $updated = 0 ] && ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    apt-get update -qq
fi

cargo build --release
exec python3 guest-test/run "$@"
