#!/usr/bin/env bash
# Install the system packages the test suite and benchmarks use (Debian 12), only when
# something is missing.
set -euo pipefail
pkgs=(iproute2 iputils-ping qemu-system-x86 iperf3 busybox-static dpdk dpdk-dev python3 procps)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
fi
# DPDK's virtio_user frontend shares hugepage memory with the backend.
want=600
have=$(cat /proc/sys/vm/nr_hugepages)
if [ "$have" -lt "$want" ]; then echo "$want" > /proc/sys/vm/nr_hugepages; fi
