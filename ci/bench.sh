#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Benchmark vhost-netmem against DPDK's vhost PMD (and any --peer backend), same run.
#
#   ci/bench.sh [--quick] [--peer 'NAME=COMMAND'] [--repeat N] [--out DIR]
#   ci/bench.sh ratelimit [--quick] [--bin PATH] [--out DIR]
#
# --quick      a few seconds per row, one repeat (what CI runs so the script cannot rot)
# --peer       another vhost-user-net backend for the TAP rows; {socket} and {tap} are
#              replaced, e.g. --peer 'ch=vhost_user_net --net-backend "socket={socket},tap={tap},num_queues=2"'
# --repeat N   repeats per row, backends alternating (default 3, quick 1); medians reported
# --bin PATH   the vhost-netmem binary to measure (default: target/release/vhost-netmem,
#              built first); python3 bench/bench.py --help lists the finer options
# --compare NAME=PATH  another vhost-netmem build measured in every row beside this one
#              (the commit before a change: same run, backends alternating)
# --perf       profile vhost-netmem in every row (perf record, cpu-clock): the hottest
#              symbols go into table.md, whole reports into DIR/logs/*.perf.txt
# --out DIR    output folder (default results/<timestamp>/); results/latest/ gets a copy
#              of table.md, results.json and chart.svg of a full default-folder run
# ratelimit    instead: a flood under --tx-rate-limit / --rx-rate-limit of 50 Mbit/s,
#              200 Mbit/s, 1 Gbit/s (1500-byte frames) and 10 kpps (64-byte frames), 10 s
#              per row (--quick: 2 s), TX (frontend txonly, --uplink null) and RX (UDP
#              flood out of a TAP in a namespace, frontend rxonly); prints the rate
#              achieved (the backend's tx/rx bytes or packets) beside the limit
#
# Needs root (namespaces, TAP, veth, AF_XDP, hugepages) and 2 CPUs: the frontend is pinned
# to CPU 0, the backend under test to CPU 1. bench/README.md explains every row.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

die() { echo "ci/bench.sh: error: $*" >&2; exit 1; }

OUT=""
MODE=bench
if [ "${1:-}" = ratelimit ]; then MODE=ratelimit; shift; fi
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; shift ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

# --------------------------------------------------------------------------- ratelimit
# One row: direction (tx|rx), the limit's name, its --*-rate-limit value, frame size.
RL_ROWS=(
    "50 Mbit/s|bandwidth=625000/100|1500"
    "200 Mbit/s|bandwidth=2500000/100|1500"
    "1 Gbit/s|bandwidth=12500000/100|1500"
    "10 kpps|ops=1000/100|64"
)
RL_MAC=52:54:00:12:34:56
RL_PIDS=()
RL_NS=""

rl_cleanup() {
    local pid
    for pid in "${RL_PIDS[@]+"${RL_PIDS[@]}"}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${RL_PIDS[@]+"${RL_PIDS[@]}"}"; do
        wait "$pid" 2>/dev/null || true
    done
    RL_PIDS=()
    if [ -n "$RL_NS" ]; then ip netns del "$RL_NS" 2>/dev/null || true; RL_NS=""; fi
}

# `rl_sample FILE KEY`: "MTIME VALUE" of queue 0's KEY from a stats file written after
# the one seen last (the backend rewrites it every 0.5 s).
RL_LAST=""
rl_sample() {
    local out i
    for i in $(seq 1 100); do
        out=$(python3 -c 'import json, os, sys
p = sys.argv[1]
try:
    t = os.stat(p).st_mtime
    print(repr(t), json.load(open(p))["queues"][0][sys.argv[2]])
except (OSError, ValueError, KeyError, IndexError):
    pass' "$1" "$2")
        if [ -n "$out" ] && [ "${out%% *}" != "$RL_LAST" ]; then
            RL_LAST="${out%% *}"
            echo "$out"
            return 0
        fi
        sleep 0.05
    done
    die "the stats file $1 was not rewritten within 5 s"
}

rl_wait() { # seconds what command...
    local n=$(( $1 * 10 )) what="$2"; shift 2
    for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "timed out waiting for $what"
}

# `rl_row DIR NAME LIMIT SIZE SECONDS LOGDIR`: measures one row and prints it.
rl_row() {
    local dir="$1" name="$2" limit="$3" size="$4" secs="$5" logs="$6"
    local tag="$dir-${limit//[\/=+]/_}" sock="$logs/$dir.sock" stats="$logs/$dir.stats.json"
    local tap=vnmrlt0 key unit
    rm -f "$sock" "$stats"
    local be=(taskset -c 1 "$BIN" --socket "$sock" --mac "$RL_MAC" --stats-file "$stats")
    if [ "$dir" = tx ]; then
        be+=(--uplink null --tx-rate-limit "$limit")
        "${be[@]}" >"$logs/$tag.backend.log" 2>&1 &
    else
        RL_NS="vnmrl-$$"
        ip netns add "$RL_NS"
        be+=(--tap "$tap" --rx-rate-limit "$limit")
        ip netns exec "$RL_NS" "${be[@]}" >"$logs/$tag.backend.log" 2>&1 &
    fi
    RL_PIDS+=($!)
    rl_wait 30 "the backend's socket $sock" test -S "$sock"
    local mode=txonly
    [ "$dir" = rx ] && mode=rxonly
    taskset -c 0 stdbuf -oL dpdk-testpmd --lcores=0@0,1@0 --file-prefix="vnmrl-fe-$$" \
        --in-memory --single-file-segments -m 256 --no-pci \
        --vdev="net_virtio_user0,path=$sock,queues=1,queue_size=256,mac=$RL_MAC" -- \
        --nb-cores=1 --total-num-mbufs=16384 --stats-period=1 --txpkts="$size" \
        --forward-mode="$mode" </dev/null >"$logs/$tag.frontend.log" 2>&1 &
    RL_PIDS+=($!)
    if [ "$dir" = rx ]; then
        rl_wait 10 "TAP $tap in $RL_NS" ip -n "$RL_NS" link show "$tap"
        ip -n "$RL_NS" link set "$tap" up
        ip netns exec "$RL_NS" taskset -c 0 python3 bench/flood.py --iface "$tap" \
            --size "$size" --dst-mac "$RL_MAC" >"$logs/$tag.flood.log" 2>&1 &
        RL_PIDS+=($!)
    fi
    case "$limit" in bandwidth=*) key="${dir}_bytes" unit=bytes ;; *) key="${dir}_packets" unit=packets ;; esac
    rl_wait 30 "the frontend's first statistics" grep -q "Rx-pps" "$logs/$tag.frontend.log"
    sleep "$RL_WARMUP"
    RL_LAST=""
    local a b
    a=$(rl_sample "$stats" "$key")
    sleep "$secs"
    b=$(rl_sample "$stats" "$key")
    local throttled
    throttled=$(rl_sample "$stats" "${dir}_throttled")
    rl_cleanup
    printf '%-4s %-12s ' "$dir" "$name"
    python3 -c 'import sys
t0, v0 = map(float, sys.argv[1].split()); t1, v1 = map(float, sys.argv[2].split())
rate = (v1 - v0) / (t1 - t0)
print(f"{rate * 8 / 1e6:.1f} Mbit/s" if sys.argv[3] == "bytes" else f"{rate / 1e3:.2f} kpps", end="")' \
        "$a" "$b" "$unit"
    echo " (throttled ${throttled#* } times)"
}

rl_main() {
    local secs=10 logs i
    RL_WARMUP=2
    BIN="$ROOT/target/release/vhost-netmem"
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[$i]}" in
            --quick) secs=2 RL_WARMUP=1 ;;
            --bin) BIN="${args[$((i + 1))]:-}"; i=$((i + 1)) ;;
            --bin=*) BIN="${args[$i]#--bin=}" ;;
            *) die "ratelimit: unknown option ${args[$i]}" ;;
        esac
    done
    [ -x "$BIN" ] || die "ratelimit: no binary at $BIN"
    "$BIN" --help | grep -q -- --tx-rate-limit || die "ratelimit: $BIN has no --tx-rate-limit"
    logs="${OUT:-$(mktemp -d /tmp/vnm-ratelimit.XXXXXX)}/logs"
    mkdir -p "$logs"
    trap 'rl_cleanup; restore_hugepages' EXIT
    printf '%-4s %-12s %s\n' dir limit achieved
    local row dir name limit size
    for dir in tx rx; do
        for row in "${RL_ROWS[@]}"; do
            IFS='|' read -r name limit size <<<"$row"
            rl_row "$dir" "$name" "$limit" "$size" "$secs" "$logs"
        done
    done
    echo "ci/bench.sh ratelimit: logs in $logs"
}

if [ "$MODE" = ratelimit ]; then
    rl_main
    exit 0
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
