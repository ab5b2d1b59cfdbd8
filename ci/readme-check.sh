#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Keep the README true: run its quick-start commands as written.
#  - the backend command (first code block under "## Quick start") must start, create
#    its TAP and listen on its socket; it runs inside a throwaway network namespace;
#  - the test command (second block) is this suite itself (ci/test.sh), checked by name.
set -euo pipefail
cd "$(dirname "$0")/.."

blocks=$(awk '/^## Quick start/{q=1} /^## /&&!/Quick start/{q=0} q&&/^```/{inb=!inb; if(!inb) n++; next} q&&inb{print n+0": "$0}' README.md)
run_cmd=$(printf '%s\n' "$blocks" | sed -n 's/^0: //p')
test_cmd=$(printf '%s\n' "$blocks" | sed -n 's/^1: //p')
[ -n "$run_cmd" ] || { echo "README: no backend command under Quick start" >&2; exit 1; }
[ "$test_cmd" = "bash ci/test.sh" ] || { echo "README: test command is '$test_cmd', expected 'bash ci/test.sh'" >&2; exit 1; }
# The QEMU arguments the README shows are the ones the guest tests run.
qemu_args=$(awk '/^\*\*QEMU\*\*/{q=1} q&&/^```/{n++; next} q&&n==1{print}' README.md)
for flag in "memory-backend-memfd,id=mem" "share=on" "-numa node,memdev=mem" \
            "-netdev vhost-user,id=n0,chardev=c0" "virtio-net-pci,netdev=n0,romfile=," "vectors=0" "reconnect=1"; do
    grep -qF -- "$flag" <<<"$qemu_args" || { echo "README: QEMU arguments lack '$flag'" >&2; exit 1; }
    grep -qF -- "$(sed "s/^-[a-z]* //" <<<"$flag")" guest-test/run || { echo "guest-test/run does not use '$flag' shown in the README" >&2; exit 1; }
done

sock=$(printf '%s\n' "$run_cmd" | sed -n 's/.*--socket \([^ ]*\).*/\1/p')
[ -n "$sock" ] || { echo "README: backend command has no --socket" >&2; exit 1; }
if [ -S "$sock" ]; then echo "README check: $sock is in use; skipping would hide a broken README" >&2; exit 1; fi

ns="vnm-readme-$$"
log=$(mktemp)
ip netns add "$ns"
cleanup() {
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
echo "running the README backend command: $run_cmd"
ip netns exec "$ns" bash -c "exec $run_cmd" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
    if [ -S "$sock" ] && grep -q "created tap vnm" "$log"; then
        echo "README backend command: listening on $sock, $(grep -o 'created tap [a-z0-9]*' "$log")"
        exit 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
done
echo "README backend command did not come up:" >&2
cat "$log" >&2
exit 1
