#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Benchmark vhost-netmem against DPDK's vhost PMD (and any --peer backend), same run.
#
#   ci/bench.sh [--quick] [--peer 'NAME=COMMAND'] [--repeat N] [--out DIR]
#
# --quick      a few seconds per row, one repeat (what CI runs so the script cannot rot)
# --peer       another vhost-user-net backend for the TAP rows; {socket} and {tap} are
#              replaced, e.g. --peer 'ch=vhost_user_net --net-backend "socket={socket},tap={tap},num_queues=2"'
# --repeat N   repeats per row, backends alternating (default 3, quick 1); medians reported
# --bin PATH   the vhost-netmem binary to measure (default: target/release/vhost-netmem,
#              built first); python3 bench/bench.py --help lists the finer options
# --perf       profile vhost-netmem in every row (perf record, cpu-clock): the hottest
#              symbols go into table.md, whole reports into DIR/logs/*.perf.txt
# --out DIR    output folder (default results/<timestamp>/); results/latest/ gets a copy
#              of table.md, results.json and chart.svg of a full default-folder run
#
# Needs root (namespaces, TAP, veth, AF_XDP, hugepages) and 2 CPUs: the frontend is pinned
# to CPU 0, the backend under test to CPU 1. bench/README.md explains every row.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

die() { echo "ci/bench.sh: error: $*" >&2; exit 1; }

OUT=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, TAP, AF_XDP and hugepages need it)"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (frontend on CPU 0, backend on CPU 1); this machine has $(nproc)"
for tool in ip taskset stdbuf python3 cargo; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

if ! command -v dpdk-testpmd >/dev/null; then
    echo "ci/bench.sh: installing DPDK (dpdk, dpdk-dev) for dpdk-testpmd"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq dpdk dpdk-dev >/dev/null \
        || die "cannot install dpdk (apt-get install dpdk dpdk-dev)"
fi
command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found after installing dpdk"

for a in "${args[@]+"${args[@]}"}"; do
    if [ "$a" = --perf ] && ! command -v perf >/dev/null; then
        echo "ci/bench.sh: installing linux-perf for --perf"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null \
            || die "cannot install linux-perf (apt-get install linux-perf)"
    fi
done

own_bin=0
for a in "${args[@]+"${args[@]}"}"; do case "$a" in --bin|--bin=*) own_bin=1 ;; esac; done
if [ "$own_bin" = 0 ]; then
    echo "ci/bench.sh: cargo build --release"
    cargo build --release --quiet || die "cargo build --release failed"
fi

# Hugepages: the frontend and the DPDK backend take 256 MiB each (2 MiB pages); keep
# 300 pages free for them, and give back what was added at the end.
HP=/proc/sys/vm/nr_hugepages
hp_orig="$(cat "$HP")"
hp_free="$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo)"
restore_hugepages() {
    if [ "$(cat "$HP")" != "$hp_orig" ]; then echo "$hp_orig" > "$HP" || true; fi
}
if [ "$hp_free" -lt 300 ]; then
    want=$((hp_orig + 300 - hp_free))
    echo "$want" > "$HP" || die "cannot set $HP to $want"
    trap restore_hugepages EXIT
    got="$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo)"
    [ "$got" -ge 300 ] || die "only $got free 2 MiB hugepages after asking for $want (need 300)"
fi

# results/latest/ holds the last full run with the default folder (never a --quick one).
latest=0
if [ -z "$OUT" ]; then
    OUT="results/$(date +%Y%m%d-%H%M%S)"
    latest=1
    for a in "${args[@]+"${args[@]}"}"; do [ "$a" = --quick ] && latest=0; done
fi
mkdir -p "$OUT"

cmd="ci/bench.sh"
for a in "${args[@]+"${args[@]}"}"; do cmd+=" $(printf '%q' "$a")"; done

rc=0
python3 bench/bench.py "${args[@]+"${args[@]}"}" --out "$OUT" --command "$cmd" || rc=$?

if [ -f "$OUT/table.md" ] && [ "$latest" = 1 ]; then
    mkdir -p results/latest
    cp "$OUT/table.md" "$OUT/results.json" "$OUT/chart.svg" results/latest/
    echo "ci/bench.sh: results/latest/ updated from $OUT"
fi
[ -f "$OUT/table.md" ] && cat "$OUT/table.md"
[ "$rc" = 0 ] || die "benchmark failed (exit $rc); logs in $OUT/logs/"
