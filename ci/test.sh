#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# The whole test suite of vhost-netmem (the README's test command; CI runs it through
# .ci/run). Needs root: TAP devices, network namespaces, AF_XDP and QEMU guests are
# part of the suite, and privileged tests must run, not skip. As root it runs as is
# (no sudo needed); from a user account: sudo bash ci/test.sh.
#
#   bash ci/test.sh            # everything
#   VNM_SKIP_GUEST=1 ...       # skip the QEMU guest suite (local iteration only)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "ci/test.sh: must run as root (TAP, namespaces, AF_XDP, QEMU guests): run it as root, or sudo bash ci/test.sh" >&2
    exit 1
fi

step() { printf '\n==== %s ====\n' "$*"; }

step "system packages"
bash ci/deps.sh

step "rust components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

step "README quick start (run as written)"
bash ci/readme-check.sh

step "unit and integration tests"
# As root every privileged test must run: a skip is a failure here.
VNM_REQUIRE_PRIVILEGED=1 cargo test --lib --bins --tests -- --test-threads=2

step "install on a clean prefix"
bash ci/install-check.sh

step "fuzzing (30 s per target)"
bash ci/fuzz.sh --seconds 30

step "benchmarks compile and run once (criterion test mode)"
cargo test --benches

if [ -z "${VNM_SKIP_GUEST:-}" ] && [ -f ci/guest-test.sh ]; then
    step "guest tests (QEMU)"
    bash ci/guest-test.sh
fi

if [ -f ci/bench.sh ]; then
    step "benchmark smoke run (numbers not judged)"
    bash ci/bench.sh --quick --out "${TMPDIR:-/tmp}/vnm-bench-ci"
fi

step "all tests passed"
