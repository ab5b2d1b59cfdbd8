#!/bin/busybox sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# /init of the guest-test guest (busybox sh).
#
# Kernel command line `key=value` pairs arrive as environment:
#   vnm_ip=10.77.0.2/24   guest address on eth0
#   vnm_host=10.77.0.1    host (TAP) address to ping and to run iperf3 against
#   vnm_mtu=1500          MTU eth0 must show (the driver applies the device's config space MTU)
#   vnm_queues=1          queue pairs eth0 must have
#   vnm_idle=120          seconds without a command before the guest gives up
#
# Every outcome is one console line, alone on its line:
#   VNM-RESULT: PASS <name>
#   VNM-RESULT: FAIL <name> <reason>
# plus VNM-INFO lines (facts for the runner), VNM-READY (waiting for commands) and
# VNM-POWEROFF. After boot the guest reads commands from the console, one a line:
#   ping <name> <size> <count>       ping the host, result <name>
#   iperf-mq <name> <seconds>        one iperf3 client per vCPU (pinned), ports 5201+cpu
#   xfer <name> <port> <bytes> <sha256>
#                                    two TCP transfers with the host, in the background
#                                    (the `migrate` scenario): host -> guest from <port>
#                                    (the received data's sha256 must be <sha256>), and
#                                    guest -> host to <port>+1 of a fresh random file of
#                                    <bytes> whose sha256 is printed first
#   info                             print VNM-INFO again
# Servers: iperf3 -s (port 5201), and a TCP echo on port 7 (busybox nc -ll -e cat).
#   poweroff                         power off
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
stty -echo 2>/dev/null

pass() { echo "VNM-RESULT: PASS $1"; }
fail() { n="$1"; shift; echo "VNM-RESULT: FAIL $n $*"; }
bye() {
    echo "VNM-POWEROFF"
    sync
    poweroff -f
    sleep 5
    echo o > /proc/sysrq-trigger
}

: "${vnm_ip:=10.77.0.2/24}" "${vnm_host:=10.77.0.1}" "${vnm_mtu:=1500}" "${vnm_queues:=1}"
: "${vnm_idle:=120}"
echo "VNM-INFO boot kernel=$(uname -r) cpus=$(nproc) cmdline: $(cat /proc/cmdline)"

# Modules in the order build-guest wrote them (built-in ones are absent from the list).
while read -r m; do
    [ -n "$m" ] || continue
    if ! out="$(insmod "/lib/vnm-modules/$m.ko" 2>&1)"; then
        fail boot "insmod $m: $out"
        bye
    fi
done < /lib/vnm-modules/order

i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
        fail boot "no eth0 after 10 s"
        bye
    fi
    sleep 0.1
done

ip link set lo up
ip link set eth0 up
ip addr add "$vnm_ip" dev eth0

info() {
    feats="$(cat /sys/class/net/eth0/device/features 2>/dev/null)"
    nq="$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
    echo "VNM-INFO eth0 mtu=$(cat /sys/class/net/eth0/mtu) queues=$nq" \
        "carrier=$(cat /sys/class/net/eth0/carrier 2>/dev/null)" \
        "mac=$(cat /sys/class/net/eth0/address) features=$feats"
}
info

mtu="$(cat /sys/class/net/eth0/mtu)"
if [ "$mtu" = "$vnm_mtu" ]; then pass guest-mtu; else fail guest-mtu "mtu $mtu, expected $vnm_mtu"; fi
nq="$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
if [ "$nq" = "$vnm_queues" ]; then
    pass guest-queues
else
    fail guest-queues "$nq rx queues, expected $vnm_queues"
fi

# ping <name> <size> <count>: all <count> replies within a deadline.
do_ping() {
    name="$1" size="$2" count="$3"
    out="$(ping -c "$count" -i 0.2 -s "$size" -w $((count * 2 + 8)) "$vnm_host" 2>&1)"
    echo "$out" | sed 's/^/  guest: /'
    got="$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')"
    if [ "${got:-0}" -ge "$count" ]; then
        pass "$name"
    else
        fail "$name" "${got:-0}/$count replies"
    fi
}

# iperf-mq <name> <seconds>: one client per vCPU, each pinned so that its packets leave
# through that vCPU's TX queue; the host runs one server per port.
do_iperf_mq() {
    name="$1" secs="$2" n="$(nproc)" c=0 pids="" bad=""
    while [ $c -lt "$n" ]; do
        taskset -c "$c" iperf3 -c "$vnm_host" -p $((5201 + c)) -t "$secs" -f m \
            --connect-timeout 5000 > "/tmp/iperf-$c.log" 2>&1 &
        pids="$pids $!"
        c=$((c + 1))
    done
    c=0
    for p in $pids; do
        if ! wait "$p"; then bad="$bad cpu$c"; fi
        grep -E 'sender|receiver|error' "/tmp/iperf-$c.log" | sed "s/^/  guest cpu$c: /"
        c=$((c + 1))
    done
    if [ -z "$bad" ]; then pass "$name"; else fail "$name" "iperf3 failed on$bad"; fi
}

# xfer <name> <port> <bytes> <sha256>: results <name>-h2g (checked here) and <name>-g2h-sent
# (the host checks the sha256 of what it received against the VNM-INFO line).
do_xfer() {
    name="$1" port="$2" bytes="$3" want="$4"
    head -c "$bytes" /dev/urandom > /tmp/g2h
    echo "VNM-INFO xfer $name g2h-sha256=$(sha256sum /tmp/g2h | cut -d' ' -f1)"
    (
        got="$(nc "$vnm_host" "$port" < /dev/null | sha256sum | cut -d' ' -f1)"
        if [ "$got" = "$want" ]; then pass "$name-h2g"; else fail "$name-h2g" "sha256 $got"; fi
    ) &
    (
        if nc "$vnm_host" $((port + 1)) < /tmp/g2h > /dev/null; then
            pass "$name-g2h-sent"
        else
            fail "$name-g2h-sent" "nc exit $?"
        fi
    ) &
    pass "$name-started"
}

do_ping ping-guest-to-host 56 3

if ! iperf3 -s -D > /dev/null 2>&1; then
    fail boot "iperf3 server did not start"
fi
# TCP echo on port 7 (every byte back: the runner's request/response latency, rr.py).
nc -ll -p 7 -e /bin/cat > /dev/null 2>&1 &

echo "VNM-READY"
while true; do
    if ! read -r -t "$vnm_idle" cmd a b c d; then
        fail idle "no command for $vnm_idle s"
        bye
    fi
    case "$cmd" in
        ping) do_ping "$a" "$b" "$c" ;;
        iperf-mq) do_iperf_mq "$a" "$b" ;;
        xfer) do_xfer "$a" "$b" "$c" "$d" ;;
        info) info ;;
        poweroff) bye ;;
        "") ;;
        *) fail command "unknown command $cmd" ;;
    esac
    echo "VNM-READY"
done
