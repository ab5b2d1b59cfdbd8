#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Build the fuzz targets (fuzz/, libFuzzer through cargo-fuzz) and run each one for a
# while from its seed corpus. Fails, loudly, when any target crashes, hangs, runs out of
# memory or trips an assertion: the input is kept under fuzz/artifacts/<target>/ and the
# command that replays it is printed. See fuzz/README.md.
#
#   bash ci/fuzz.sh                          # every target, 30 s each
#   bash ci/fuzz.sh --seconds 300            # longer
#   bash ci/fuzz.sh --targets tx_path,rx_path
#   bash ci/fuzz.sh --keep-going             # collect every crash instead of stopping
#                                            # at the first (libFuzzer -fork=1)
#
# Works on the stable toolchain: cargo-fuzz passes nightly-only flags to rustc
# (-Zsanitizer=address), which RUSTC_BOOTSTRAP=1 makes stable rustc accept. cargo-fuzz
# is installed from crates.io into a cache on first use; libFuzzer itself is built from
# the libfuzzer-sys crate with the system C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
targets=all
keep_going=
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --seconds=*) seconds="${1#*=}"; shift ;;
        --targets) targets="$2"; shift 2 ;;
        --targets=*) targets="${1#*=}"; shift ;;
        --keep-going) keep_going=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "ci/fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$seconds" in ''|*[!0-9]*) echo "ci/fuzz.sh: --seconds needs a number" >&2; exit 2 ;; esac

all_targets=(virtio_net_hdr chain_walk tx_path rx_path vhost_user)
if [ "$targets" = all ]; then
    run=("${all_targets[@]}")
else
    IFS=, read -r -a run <<< "$targets"
fi

# Builds share two cores with everything else on these machines.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

# A C++ compiler for libFuzzer (libfuzzer-sys builds it from source).
if ! command -v c++ >/dev/null 2>&1; then
    echo "installing g++ (libFuzzer is C++)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq g++
fi

# cargo-fuzz, pinned, in a cache outside the work tree.
cargo_fuzz_version=0.13.2
cache="${VNM_FUZZ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vhost-netmem}/cargo-fuzz-$cargo_fuzz_version"
if ! [ -x "$cache/bin/cargo-fuzz" ]; then
    echo "installing cargo-fuzz $cargo_fuzz_version into $cache"
    nice -n 19 cargo install --locked --quiet cargo-fuzz --version "$cargo_fuzz_version" --root "$cache"
fi
export PATH="$cache/bin:$PATH"
export RUSTC_BOOTSTRAP=1

# Debug assertions on: an integer overflow on guest- or frontend-supplied numbers is a
# finding too.
build_flags=(--debug-assertions)
echo "building fuzz targets ($(rustc --version))"
nice -n 19 cargo fuzz build "${build_flags[@]}"

work="${TMPDIR:-/tmp}/vnm-fuzz"
failed=()
summary=()
for t in "${run[@]}"; do
    if ! [ -d "fuzz/corpus/$t" ]; then
        echo "ci/fuzz.sh: no target $t (have: ${all_targets[*]})" >&2
        exit 2
    fi
    # New inputs go to a scratch corpus; the seeds in the repository are only read.
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    log="$work/$t.log"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1)
    if [ -n "$keep_going" ]; then
        args+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    echo "==== fuzz $t for ${seconds}s (log: $log)"
    marker="$work/$t.start"
    touch "$marker"
    set +e
    nice -n 19 cargo fuzz run "${build_flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- "${args[@]}" >"$log" 2>&1
    rc=$?
    set -e
    crashes=$(find "fuzz/artifacts/$t" -type f -newer "$marker" | wc -l)
    if [ -n "$keep_going" ]; then
        # Fork mode reports progress lines of its own: "#N: cov: C ft: F corp: K exec/s: E".
        last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 || true)
        execs=$(sed -nE 's/^#([0-9]+):.*/\1/p' <<< "$last")
    else
        last=$(grep -E '^#[0-9]+[[:space:]]+(DONE|NEW|REDUCE|pulse|INITED)' "$log" | tail -1 || true)
        execs=$(sed -nE 's/.*stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
    fi
    cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<< "$last")
    ft=$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<< "$last")
    corp=$(sed -nE 's/.*corp: ([0-9]+).*/\1/p' <<< "$last")
    rate=$(( ${execs:-0} / (seconds > 0 ? seconds : 1) ))
    line="$t: ${execs:-?} execs (~${rate}/s), cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, crashes $crashes"
    summary+=("$line")
    echo "$line"
    if [ "$rc" != 0 ] || [ "$crashes" != 0 ]; then
        failed+=("$t")
        echo "!!!! fuzz target $t FAILED (exit $rc); last lines of $log:" >&2
        grep -E 'panicked|ERROR|SUMMARY|deadly|Test unit written|==[0-9]+==' "$log" | head -20 >&2 || true
        tail -5 "$log" >&2
        for a in $(find "fuzz/artifacts/$t" -type f -newer "$marker" | head -5); do
            echo "  replay: RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $t $a" >&2
        done
    fi
done

echo
echo "==== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FUZZING FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzzing passed: ${#run[@]} targets, no crash"
