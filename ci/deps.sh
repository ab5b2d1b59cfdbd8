#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Install the system packages the test suite and benchmarks use (Debian 12), only when
# something is missing.
set -euo pipefail
pkgs=(iproute2 iputils-ping qemu-system-x86 iperf3 busybox-static dpdk dpdk-dev python3 procps
    systemd util-linux prometheus)
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
# Hugepages are not reserved here: nothing in the test suite needs them, and a
# reservation made here would outlive the run. The one script that uses them
# (ci/bench.sh, for DPDK's virtio_user frontend) raises vm.nr_hugepages itself and puts
# the old value back on exit.
