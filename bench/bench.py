#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""vhost-netmem benchmark: the backend against DPDK's vhost PMD (and any --peer), same run.

Called by ci/bench.sh (which builds the backend and checks the machine first); see
bench/README.md for what each row measures, the traffic sources and the counters.

Layout of one run (one backend, one workload, one frame size):

  core 0: frontend  dpdk-testpmd + net_virtio_user (txonly / rxonly / io)
          + for uplink RX rows, the UDP flood (bench/flood.py) in the namespace
  core 1: backend under test, in a fresh network namespace
          (vhost-netmem, dpdk-testpmd + net_vhost, or a --peer command)

Every process started is tracked by PID and stopped by PID; every namespace created
is deleted, also on errors and signals.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import chart  # noqa: E402  (bench/chart.py)

FRONT_CPU = 0
BACK_CPU = 1
GUEST_MAC = "52:54:00:12:34:56"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RING_IO_BURST = 128  # packets circulating in the ring-io (reflect) rows


class BenchError(Exception):
    """A failure that ends a run (or the whole benchmark) with a message."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- processes


class Processes:
    """Every process this benchmark started, stopped by PID only."""

    def __init__(self):
        self.live = {}

    def start(self, name, argv, logpath, stdout_pipe=False):
        logf = open(logpath, "ab")
        logf.write(f"$ {shlex.join(argv)}\n".encode())
        logf.flush()
        try:
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else logf,
                stderr=subprocess.STDOUT if stdout_pipe else logf,
                start_new_session=True,
            )
        except OSError as e:
            logf.close()
            raise BenchError(f"cannot start {name} ({argv[0]}): {e}") from e
        p.bench_name = name
        p.bench_log = logf
        self.live[p.pid] = p
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=5.0):
        """Signal `p` and wait; SIGKILL after `timeout`. True if it exited on `sig`."""
        if p.pid not in self.live:
            return True
        clean = True
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                clean = False
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        del self.live[p.pid]
        if p.stdout:
            p.stdout.close()
        p.bench_log.close()
        return clean

    def stop_all(self):
        for p in list(self.live.values()):
            self.stop(p, signal.SIGTERM, 3.0)


PROCS = Processes()
TMPDIRS = []


def run_cmd(argv, check=True):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise BenchError(f"`{shlex.join(argv)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Namespaces:
    """Network namespaces this benchmark created."""

    def __init__(self):
        self.made = []
        self.serial = 0

    def create(self):
        self.serial += 1
        name = f"vnmb{os.getpid()}-{self.serial}"
        run_cmd(["ip", "netns", "add", name])
        self.made.append(name)
        run_cmd(["ip", "-n", name, "link", "set", "lo", "up"])
        # No IPv6 autoconfiguration chatter on the uplinks: count only our traffic.
        for key in ("all", "default"):
            run_cmd(["ip", "netns", "exec", name, "sysctl", "-qw",
                     f"net.ipv6.conf.{key}.disable_ipv6=1"], check=False)
        return name

    def delete(self, name):
        if name in self.made:
            run_cmd(["ip", "netns", "del", name], check=False)
            self.made.remove(name)

    def delete_all(self):
        for name in list(self.made):
            self.delete(name)


NETNS = Namespaces()


# --------------------------------------------------------------------------- counters


def proc_cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def netdev(pid, iface):
    """Counters of `iface` in the namespace of `pid` (/proc/PID/net/dev)."""
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f:
            name, sep, rest = line.partition(":")
            if sep and name.strip() == iface:
                v = [int(x) for x in rest.split()]
                return {"rx_packets": v[1], "rx_dropped": v[3], "tx_packets": v[9], "tx_dropped": v[11]}
    return None


class TestpmdStats:
    """Parses dpdk-testpmd's periodic port statistics (--stats-period 1) from its stdout.

    Each block is stamped with the time its first line arrived; rates come from the
    difference of two blocks and their stamps."""

    PORT = re.compile(r"NIC statistics for port (\d+)")
    RX = re.compile(r"RX-packets:\s+(\d+)\s+RX-missed:\s+(\d+)")
    TX = re.compile(r"TX-packets:\s+(\d+)\s+TX-errors:\s+(\d+)")

    def __init__(self, proc, logpath):
        self.proc = proc
        self.cond = threading.Condition()
        self.blocks = 0
        self.latest = {}  # port -> (t, {"rx":..,"tx":..})
        self.tail = []
        self.thread = threading.Thread(target=self._read, args=(logpath,), daemon=True)
        self.thread.start()

    def _read(self, logpath):
        port, t_block, cur = None, None, {}
        with open(logpath, "a") as logf:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                logf.write(line)
                self.tail = (self.tail + [line.rstrip()])[-40:]
                m = self.PORT.search(line)
                if m:
                    port, t_block, cur = int(m.group(1)), time.monotonic(), {}
                    continue
                if port is None:
                    continue
                m = self.RX.search(line)
                if m:
                    cur["rx"], cur["rx_missed"] = int(m.group(1)), int(m.group(2))
                m = self.TX.search(line)
                if m:
                    cur["tx"] = int(m.group(1))
                    with self.cond:
                        self.latest[port] = (t_block, dict(cur))
                        self.blocks += 1
                        self.cond.notify_all()
                    port = None

    def wait_blocks(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.blocks < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return False
                self.cond.wait(min(left, 0.2))
        return True

    def sample(self, port, key):
        with self.cond:
            if port not in self.latest:
                raise BenchError(f"testpmd printed no statistics for port {port}")
            t, d = self.latest[port]
            return t, d[key]


# --------------------------------------------------------------------------- workloads


class Workload:
    def __init__(self, key, uplink, direction, what, packed=False):
        self.key, self.uplink, self.direction, self.what = key, uplink, direction, what
        # Packed virtqueues: the frontend's virtio_user with packed_vq=1.
        self.packed = packed


WORKLOADS = [
    Workload("ring-tx", "ring", "tx",
             "guest TX into the backend's ring path alone: frontend txonly; vhost-netmem "
             "`--uplink null`, DPDK vhost PMD rxonly; counted: packets the backend took "
             "(vhost-netmem tx_packets, testpmd RX-packets of the vhost port)"),
    Workload("ring-rx", "ring", "rx",
             "guest RX through the ring path alone, each backend building packets from a "
             "template: vhost-netmem `--uplink generator --generator-size SIZE`, DPDK vhost "
             "PMD testpmd txonly `--txpkts=SIZE` (both a UDP/IPv4 frame of SIZE bytes); "
             "frontend rxonly; counted: packets the frontend received"),
    Workload("ring-io", "ring", "io",
             "guest TX and RX through the ring path, reflected: frontend io with --tx-first "
             f"--burst={RING_IO_BURST} ({RING_IO_BURST} packets circulating); vhost-netmem `--uplink loopback`, DPDK vhost "
             "PMD io forwarding back to the same port; counted: packets the frontend "
             "received. Each packet crosses the TX ring and the RX ring once, and "
             "vhost-netmem's loopback copies it out of guest memory and back in"),
    Workload("ring-tx-packed", "ring", "tx",
             "ring-tx on packed virtqueues (frontend virtio_user packed_vq=1)", packed=True),
    Workload("ring-rx-packed", "ring", "rx",
             "ring-rx on packed virtqueues (frontend virtio_user packed_vq=1)", packed=True),
    Workload("ring-io-packed", "ring", "io",
             "ring-io on packed virtqueues (frontend virtio_user packed_vq=1)", packed=True),
    Workload("tap-tx", "tap", "tx",
             "guest TX to a TAP in the namespace: frontend txonly; counted: the TAP's "
             "rx_packets (what reached the kernel)"),
    Workload("tap-rx", "tap", "rx",
             "guest RX from a TAP: UDP flood out of the TAP in the namespace (bench/flood.py); "
             "frontend rxonly; counted: packets the frontend received"),
    Workload("tap-tx-packed", "tap", "tx",
             "tap-tx on packed virtqueues (frontend virtio_user packed_vq=1)", packed=True),
    Workload("tap-rx-packed", "tap", "rx",
             "tap-rx on packed virtqueues (frontend virtio_user packed_vq=1)", packed=True),
    Workload("xdp-tx", "xdp", "tx",
             "guest TX to AF_XDP on a veth in the namespace (copy mode): frontend txonly; "
             "counted: the veth peer's rx_packets"),
    Workload("xdp-rx", "xdp", "rx",
             "guest RX from AF_XDP on a veth: UDP flood out of the veth peer, XDP redirect "
             "to the XSK; frontend rxonly; counted: packets the frontend received"),
]


class RunCtx:
    """Names and paths of one run."""

    def __init__(self, tmp, ns, serial):
        self.ns = ns
        self.socket = os.path.join(tmp, f"s{serial}.sock")
        self.stats = os.path.join(tmp, f"s{serial}.stats.json")
        self.tap = f"vnmbt{serial % 10000}"
        self.veth = f"vnmbx{serial % 10000}"
        self.peer = f"vnmbp{serial % 10000}"
        self.serial = serial


class Backend:
    """One backend to measure: vhost-netmem, DPDK's vhost PMD, or a --peer command."""

    def __init__(self, name, kind, extra=None, command=None, binary=None):
        self.name, self.kind, self.extra, self.command = name, kind, extra or [], command
        self.binary = binary  # another vhost-netmem build (--compare); None: cfg.bin
        self.skip = {}  # workload key -> reason

    def supports(self, wl):
        if wl.key in self.skip:
            return False, self.skip[wl.key]
        if self.kind == "peer" and wl.uplink != "tap":
            return False, "a --peer command has only {socket} and {tap}: TAP rows only"
        return True, ""

    def argv(self, wl, ctx, cfg, size):
        if self.kind == "vhost-netmem":
            a = [self.binary or cfg.bin, "--socket", ctx.socket, "--mac", GUEST_MAC,
                 "--stats-file", ctx.stats]
            ring = {"tx": ["--uplink", "null"], "io": ["--uplink", "loopback"],
                    "rx": ["--uplink", "generator", "--generator-size", str(size)]}[wl.direction]
            a += {"ring": ring,
                  "tap": ["--tap", ctx.tap], "xdp": ["--xdp", ctx.veth]}[wl.uplink]
            return a + self.extra
        if self.kind == "dpdk":
            a = ["stdbuf", "-oL", "dpdk-testpmd", f"--lcores=0@{BACK_CPU},1@{BACK_CPU}",
                 f"--file-prefix=vnmb-be-{os.getpid()}", "--in-memory", "--single-file-segments",
                 "-m", "256", "--no-pci", f"--vdev=net_vhost0,iface={ctx.socket},queues=1"]
            if wl.uplink == "tap":
                a.append(f"--vdev=net_tap0,iface={ctx.tap}")
            elif wl.uplink == "xdp":
                a.append(f"--vdev=net_af_xdp0,iface={ctx.veth},start_queue=0,queue_count=1")
            a += ["--", "--nb-cores=1", "--total-num-mbufs=16384", "--stats-period=1"]
            if wl.uplink == "ring" and wl.direction == "tx":
                a.append("--forward-mode=rxonly")
            elif wl.uplink == "ring" and wl.direction == "rx":
                a += ["--forward-mode=txonly", f"--txpkts={size}"]
            elif wl.uplink == "ring":
                a += ["--forward-mode=io", "--port-topology=loop"]
            else:
                a.append("--forward-mode=io")
            return a
        cmd = self.command.replace("{socket}", ctx.socket).replace("{tap}", ctx.tap)
        return shlex.split(cmd)


def frontend_argv(wl, ctx, size):
    a = ["stdbuf", "-oL", "dpdk-testpmd", f"--lcores=0@{FRONT_CPU},1@{FRONT_CPU}",
         f"--file-prefix=vnmb-fe-{os.getpid()}", "--in-memory", "--single-file-segments",
         "-m", "256", "--no-pci",
         f"--vdev=net_virtio_user0,path={ctx.socket},queues=1,queue_size=256,mac={GUEST_MAC}"
         + (",packed_vq=1" if wl.packed else ""),
         "--", "--nb-cores=1", "--total-num-mbufs=16384", "--stats-period=1", f"--txpkts={size}"]
    if wl.direction == "tx":
        a.append("--forward-mode=txonly")
    elif wl.direction == "io":
        a += ["--forward-mode=io", "--port-topology=loop", "--tx-first", f"--burst={RING_IO_BURST}"]
    else:
        a.append("--forward-mode=rxonly")
    return a


def pinned(cpu, argv, ns=None):
    a = ["taskset", "-c", str(cpu)] + argv
    return (["ip", "netns", "exec", ns] + a) if ns else a


def wait_for(pred, timeout, what, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"{p.bench_name} exited ({p.returncode}) while waiting for {what}")
        time.sleep(0.02)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


def log_tail(path, n=12):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def flatten(d, prefix=""):
    """Numeric leaves of a nested dict, keys joined with '.' (uplink counter groups)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = v
    return out


def read_stats_file(path):
    """(mtime, flattened total counters) of vhost-netmem's --stats-file."""
    try:
        st = os.stat(path)
        with open(path) as f:
            return st.st_mtime, flatten(json.load(f)["total"])
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def run_one(cfg, backend, wl, size, rep, tmp, logdir, serial):
    """Measure one row once. Returns the measurement dict (with "error" on failure)."""
    ns = NETNS.create()
    ctx = RunCtx(tmp, ns, serial)
    tag = f"{serial:03d}-{backend.name.replace(' ', '_')}-{wl.key}-{size}-r{rep}"
    res = {"backend": backend.name, "workload": wl.key, "size": size, "repeat": rep,
           "loadavg_start": open("/proc/loadavg").read().split()[:3], "notes": []}
    procs = []
    be = fe = gen = None
    try:
        if wl.uplink == "xdp":
            run_cmd(["ip", "-n", ns, "link", "add", ctx.veth, "type", "veth", "peer", "name", ctx.peer])
            for dev in (ctx.veth, ctx.peer):
                run_cmd(["ip", "-n", ns, "link", "set", dev, "up"])
        be_argv = pinned(BACK_CPU, backend.argv(wl, ctx, cfg, size), ns)
        be_log = os.path.join(logdir, tag + ".backend.log")
        is_testpmd = backend.kind == "dpdk"
        be = PROCS.start(f"backend {backend.name}", be_argv, be_log, stdout_pipe=is_testpmd)
        procs.append(be)
        be_stats = TestpmdStats(be, be_log) if is_testpmd else None
        wait_for(lambda: os.path.exists(ctx.socket), 30, f"{backend.name} to create {ctx.socket}", [be])

        fe_log = os.path.join(logdir, tag + ".frontend.log")
        fe = PROCS.start("frontend testpmd", pinned(FRONT_CPU, frontend_argv(wl, ctx, size)), fe_log,
                         stdout_pipe=True)
        procs.append(fe)
        fe_stats = TestpmdStats(fe, fe_log)
        if not fe_stats.wait_blocks(1, 30):
            raise BenchError("the frontend printed no statistics within 30 s "
                             f"(see {fe_log}):\n{log_tail(fe_log)}")

        uplink_dev = None
        if wl.uplink == "tap":
            uplink_dev = ctx.tap
            wait_for(lambda: netdev(be.pid, ctx.tap) is not None, 10,
                     f"TAP {ctx.tap} in namespace {ns}", [be, fe])
            run_cmd(["ip", "-n", ns, "link", "set", ctx.tap, "up"])
        elif wl.uplink == "xdp":
            uplink_dev = ctx.veth

        if wl.direction == "rx" and wl.uplink != "ring":
            src = ctx.tap if wl.uplink == "tap" else ctx.peer
            gen_argv = pinned(FRONT_CPU, [sys.executable, os.path.join(HERE, "flood.py"),
                                          "--iface", src, "--size", str(size), "--dst-mac", GUEST_MAC,
                                          "--batch", str(cfg.flood_batch),
                                          "--gap-us", str(cfg.flood_gap_us)], ns)
            gen = PROCS.start("UDP flood", gen_argv, os.path.join(logdir, tag + ".flood.log"))
            procs.append(gen)

        # Counting point. Each count() returns (time, packets) from a fresh reading:
        # testpmd prints its counters every 1-2 s and the stats file is rewritten every
        # second, so those wait for the next update.
        def fresh_testpmd(stats, port):
            def count():
                if not stats.wait_blocks(stats.blocks + 1, 5):
                    raise BenchError("testpmd stopped printing statistics")
                return stats.sample(port, "rx")
            return count

        if wl.direction in ("rx", "io"):
            count = fresh_testpmd(fe_stats, 0)
        elif wl.uplink == "ring" and backend.kind == "dpdk":
            count = fresh_testpmd(be_stats, 0)
        elif wl.uplink == "ring":
            def count():
                first = read_stats_file(ctx.stats)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    s = read_stats_file(ctx.stats)
                    if s is not None and (first is None or s[0] != first[0]):
                        return s[0], s[1]["tx_packets"]
                    time.sleep(0.01)
                raise BenchError(f"the stats file {ctx.stats} was not updated")
        else:
            dev = ctx.tap if wl.uplink == "tap" else ctx.peer

            def count():
                d = netdev(be.pid, dev)
                if d is None:
                    raise BenchError(f"{dev} vanished from namespace {ns}")
                return time.monotonic(), d["rx_packets"]

        time.sleep(cfg.warmup)
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"{p.bench_name} exited ({p.returncode}) during warm-up:\n"
                                 f"{log_tail(be_log if p is be else fe_log)}")
        c0, cpu0, t0 = count(), proc_cpu_seconds(be.pid), time.monotonic()
        fe0 = fe_stats.sample(0, "tx")
        nm0 = read_stats_file(ctx.stats) if backend.kind == "vhost-netmem" else None
        dev0 = netdev(be.pid, uplink_dev) if uplink_dev else None
        prof = None
        if cfg.perf and backend.kind == "vhost-netmem":
            # The backend's profile over the measurement window (cpu-clock sampling:
            # this machine has no hardware counters), reported after the run.
            prof_data = os.path.join(logdir, tag + ".perf.data")
            prof = subprocess.Popen(["perf", "record", "-q", "-g", "-F", "999", "-p", str(be.pid),
                                     "-o", prof_data, "--", "sleep", str(cfg.duration)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(cfg.duration)
        if prof is not None:
            prof.wait(timeout=cfg.duration + 30)
            res["profile"] = perf_top(prof_data, os.path.join(logdir, tag + ".perf.txt"))
        c1, cpu1, t1 = count(), proc_cpu_seconds(be.pid), time.monotonic()
        fe1 = fe_stats.sample(0, "tx")
        nm1 = read_stats_file(ctx.stats) if backend.kind == "vhost-netmem" else None
        dev1 = netdev(be.pid, uplink_dev) if uplink_dev else None
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"{p.bench_name} exited ({p.returncode}) during the measurement")
        if c1[0] <= c0[0]:
            raise BenchError("the packet counter was not updated during the measurement window")
        pps = (c1[1] - c0[1]) / (c1[0] - c0[0])
        cpu_rate = (cpu1 - cpu0) / (t1 - t0)
        res.update({
            "pps": pps,
            "gbps": pps * size * 8 / 1e9,
            "backend_cpu_util": cpu_rate,
            "cpu_s_per_mpkt": (cpu_rate / pps * 1e6) if pps > 0 else None,
            "peak_rss_kib": proc_status_kb(be.pid, "VmHWM"),
            "hugetlb_kib": proc_status_kb(be.pid, "HugetlbPages"),
            "window_s": round(c1[0] - c0[0], 3),
        })
        if wl.direction == "tx" and fe1[0] > fe0[0]:
            # What the frontend got into the TX ring (it waits for room: not an offered load).
            res["frontend_tx_pps"] = (fe1[1] - fe0[1]) / (fe1[0] - fe0[0])
        if dev0 and dev1:
            res["uplink_delta"] = {k: dev1[k] - dev0[k] for k in dev0}
            if wl.direction == "rx":
                # Packets the flood pushed that the uplink had to drop: the TAP's queue
                # was full (tx_dropped), or the XSK RX ring was (veth rx_dropped).
                key = "tx_dropped" if wl.uplink == "tap" else "rx_dropped"
                res["uplink_drop_pps"] = res["uplink_delta"][key] / (t1 - t0)
        if nm0 and nm1:
            delta = {k: nm1[1][k] - nm0[1].get(k, 0) for k in nm1[1]}
            res["vhost_netmem_delta"] = delta
            bad = {k: v for k, v in delta.items()
                   if v and ("_drop" in k or k.endswith(("ring_errors", "uplink_errors")))}
            if bad:
                res["notes"].append("vhost-netmem counters moved: " +
                                    ", ".join(f"{k}+{v}" for k, v in sorted(bad.items())))
        if pps <= 0:
            raise BenchError("no packets were counted")
    except BenchError as e:
        res["error"] = f"{e} (logs: {os.path.join(logdir, tag)}.*)"
    except Exception as e:  # a bug here must not leave the other rows unmeasured
        res["error"] = f"internal error: {e!r} (logs: {os.path.join(logdir, tag)}.*)"
        traceback.print_exc()
    finally:
        if gen is not None:
            PROCS.stop(gen, signal.SIGTERM, 5)
        if fe is not None:
            PROCS.stop(fe, signal.SIGINT, 10)
        if be is not None:
            if backend.kind == "vhost-netmem" and be.poll() is None:
                # The frontend is gone: an idle backend should use no CPU now.
                try:
                    a = proc_cpu_seconds(be.pid)
                    time.sleep(0.4)
                    spin = (proc_cpu_seconds(be.pid) - a) / 0.4
                    if spin > 0.25:
                        res["notes"].append(f"after the frontend disconnected the backend kept using "
                                            f"{spin:.0%} of a core")
                except OSError:
                    pass
            sig = signal.SIGINT if backend.kind == "dpdk" else signal.SIGTERM
            if be.poll() is not None and "error" not in res:
                res["notes"].append(f"backend exited on its own ({be.returncode})")
            if not PROCS.stop(be, sig, 5):
                res["notes"].append(f"backend did not exit within 5 s of {sig.name}; killed")
            if backend.kind == "vhost-netmem":
                errs = [l.strip() for l in open(be_log, errors="replace") if "ERROR" in l or "WARN" in l]
                if errs:
                    res["notes"].append("backend log: " + errs[0][:200] +
                                        (f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""))
        NETNS.delete(ns)
    if gen is not None:
        try:
            with open(os.path.join(logdir, tag + ".flood.log")) as f:
                for line in f:
                    if line.startswith("{"):
                        res["flood"] = json.loads(line)
                        res["offered_pps"] = res["flood"]["pps"] + res.get("uplink_drop_pps", 0)
        except (OSError, ValueError):
            pass
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    return res


# --------------------------------------------------------------------------- report


def perf_top(data, out, n=12):
    """`perf report` of `data` into `out` (flat, self time); the `n` hottest symbols as
    (percent, symbol) pairs."""
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                          "--percent-limit", "0.5", "--sort", "symbol"],
                         capture_output=True, text=True, timeout=120)
    with open(out, "w") as f:
        f.write(rep.stdout)
    top = []
    for line in rep.stdout.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+\S+\s+(.*)$", line)
        if m:
            sym = re.sub(r"(\s+-)+\s*$", "", m.group(2)).strip()
            top.append((float(m.group(1)), sym[:90]))
    return top[:n]


def median(xs):
    return statistics.median(xs) if xs else None


def summarize(runs, backends, sizes):
    """Rows: one per (workload, size, backend name) with medians over the repeats."""
    rows = []
    for wl in WORKLOADS:
        for size in sizes:
            for name in backends:
                mine = [r for r in runs if r["workload"] == wl.key and r["size"] == size
                        and r["backend"] == name]
                ok = [r for r in mine if "error" not in r and "skipped" not in r]
                row = {"workload": wl.key, "size": size, "backend": name, "runs": len(ok)}
                skipped = [r for r in mine if "skipped" in r]
                if skipped and not ok:
                    row["skipped"] = skipped[0]["skipped"]
                failed = [r["error"] for r in mine if "error" in r]
                if failed:
                    row["errors"] = failed
                if ok:
                    pps = [r["pps"] for r in ok]
                    row.update({
                        "pps": median(pps), "pps_min": min(pps), "pps_max": max(pps),
                        "gbps": median([r["gbps"] for r in ok]),
                        "cpu_s_per_mpkt": median([r["cpu_s_per_mpkt"] for r in ok]),
                        "backend_cpu_util": median([r["backend_cpu_util"] for r in ok]),
                        "peak_rss_kib": max(r["peak_rss_kib"] for r in ok),
                        "hugetlb_kib": max(r["hugetlb_kib"] for r in ok),
                    })
                    offered = [r for r in ok if r.get("offered_pps")]
                    if offered:
                        row["offered_pps"] = median([r["offered_pps"] for r in offered])
                        row["uplink_drop_pps"] = median([r.get("uplink_drop_pps", 0) for r in offered])
                        row["lost_share"] = median([max(0.0, 1 - r["pps"] / r["offered_pps"])
                                                    for r in offered])
                notes = sorted({n for r in mine for n in r.get("notes", [])})
                if notes:
                    row["notes"] = notes
                profiled = [r["profile"] for r in ok if r.get("profile")]
                if profiled:
                    row["profile"] = profiled[0]
                if mine:
                    rows.append(row)
    return rows


def ratios(rows, backends):
    """vhost-netmem (and its variants) over DPDK's vhost PMD, per workload and size."""
    out = []
    ref = "dpdk-vhost"
    sizes = sorted({r["size"] for r in rows})
    for wl in WORKLOADS:
        for size in sizes:
            d = next((r for r in rows if r["workload"] == wl.key and r["size"] == size
                      and r["backend"] == ref and "pps" in r), None)
            for name in backends:
                if name == ref:
                    continue
                r = next((r for r in rows if r["workload"] == wl.key and r["size"] == size
                          and r["backend"] == name and "pps" in r), None)
                if r and d:
                    out.append({"workload": wl.key, "size": size, "backend": name,
                                "pps_ratio": r["pps"] / d["pps"],
                                "cpu_ratio": (r["cpu_s_per_mpkt"] / d["cpu_s_per_mpkt"])
                                if d["cpu_s_per_mpkt"] else None})
    return out


def fmt_mpps(v):
    return f"{v / 1e6:.3f}"


def table_md(doc):
    L = []
    m = doc["meta"]
    L.append(f"# vhost-netmem benchmark ({m['mode']}, {m['started']})\n")
    L.append(f"Command: `{m['command']}`  ")
    L.append(f"Machine: {m['machine']}; load average at start {' '.join(m['loadavg_start'])}, at end "
             f"{' '.join(m['loadavg_end'])}; {m['repeat']} repeat(s), {m['duration_s']} s per measurement "
             f"after {m['warmup_s']} s warm-up; medians, min-max in the last column.  ")
    L.append(f"Frontend: dpdk-testpmd + net_virtio_user on CPU {FRONT_CPU}; backend under test "
             f"pinned to CPU {BACK_CPU}; RX-row UDP flood on CPU {FRONT_CPU}.  ")
    L.append(f"{m['vhost_netmem_version']} ({m['vhost_netmem_build']}); DPDK {m['dpdk_version']}.  ")
    loads = [float(r["loadavg_start"][0]) for r in doc["runs"] if "loadavg_start" in r]
    if loads:
        L.append(f"Other load on the machine: 1-minute load average {min(loads):.1f}-{max(loads):.1f} "
                 "across the runs (2 CPUs).")
    L.append("")
    L.append("| workload | size | backend | Mpps | Gbit/s | CPU s / Mpkt | peak RSS MiB | offered Mpps | Mpps min-max (runs) |")
    L.append("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for r in doc["rows"]:
        head = f"| {r['workload']} | {r['size']} | {r['backend']} |"
        if "pps" in r:
            off = "-"
            if r.get("offered_pps"):
                off = f"{fmt_mpps(r['offered_pps'])} ({100 * r['lost_share']:.0f} % lost)"
            L.append(f"{head} {fmt_mpps(r['pps'])} | {r['gbps']:.2f} | {r['cpu_s_per_mpkt']:.3f} | "
                     f"{r['peak_rss_kib'] / 1024:.1f} | {off} | {fmt_mpps(r['pps_min'])}-{fmt_mpps(r['pps_max'])} "
                     f"({r['runs']}) |")
        elif "skipped" in r:
            L.append(f"{head} skipped | | | | | {r['skipped']} |")
        else:
            L.append(f"{head} FAILED | | | | | {r.get('errors', ['?'])[0][:120]} |")
    L.append("")
    if doc["ratios"]:
        L.append("## vhost-netmem / DPDK vhost PMD (median packets/s; CPU per packet)\n")
        L.append("| workload | size | backend | pps ratio | CPU/pkt ratio |")
        L.append("|---|---:|---|---:|---:|")
        for q in doc["ratios"]:
            cr = f"{q['cpu_ratio']:.2f}" if q["cpu_ratio"] else "-"
            L.append(f"| {q['workload']} | {q['size']} | {q['backend']} | {q['pps_ratio']:.2f}x | {cr} |")
        L.append("")
    L.append("## What each workload measures\n")
    for wl in WORKLOADS:
        L.append(f"- **{wl.key}**: {wl.what}.")
    L.append("- Gbit/s = packets/s x frame size x 8 (Ethernet frame without FCS). CPU s / Mpkt: "
             "the backend process's utime+stime (all threads, /proc/PID/stat) per million packets; "
             "a DPDK backend busy-polls a whole core whatever the rate. Peak RSS: VmHWM (DPDK's "
             "hugepages are not in it: see hugetlb_kib in results.json). Offered (uplink RX "
             "rows): what the UDP flood pushed at the uplink per second (sent plus what the TAP "
             "queue or the XSK ring dropped), and the share that never reached the frontend; "
             "about 0 % lost means the source, not the backend, set the rate.")
    L.append("- ring-tx at 1500 B is not the same work for both: vhost-netmem's null uplink never "
             "touches the payload (the frags point into guest memory), DPDK's vhost PMD copies "
             "each packet into an mbuf when it dequeues it.")
    L.append("- tap-rx: DPDK's net_tap has the kernel raise a real-time signal (F_SETSIG) for every packet "
             "written into its TAP (its Rx trigger); the signal is raised in the sender's context, which slows the flood itself: "
             "its row is source-limited by its own design. xdp-rx: the veth's XDP and XSK work and "
             "the backend's wake-ups run on the sender's CPU too, so the offered rate differs by "
             "backend.")
    L.append("- bpN rows: vhost-netmem with `--busy-poll N` (microseconds).")
    for s in doc["meta"].get("skipped_reasons", []):
        L.append(f"- {s}")
    profiled = [r for r in doc["rows"] if r.get("profile")]
    if profiled:
        L.append("\n## Where vhost-netmem's time goes (perf, cpu-clock, self time, first repeat)\n")
        for r in profiled:
            top = ", ".join(f"{sym} {pct:.1f} %" for pct, sym in r["profile"][:8])
            L.append(f"- {r['workload']} {r['size']} B, {r['backend']}: {top}")
    notes = [(r, n) for r in doc["rows"] for n in r.get("notes", [])]
    L.append("\n## Problems seen\n")
    if notes:
        for r, n in notes:
            L.append(f"- {r['backend']} {r['workload']} {r['size']} B: {n}")
    else:
        L.append("None: in every vhost-netmem run no drop or error counter moved, the log had no "
                 "ERROR/WARN line, the backend went idle once the frontend left and exited on "
                 "SIGTERM.")
    L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------- main


def version_of(argv):
    try:
        return run_cmd(argv, check=False).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def write_outputs(doc, out):
    """Summarize doc["runs"] and write results.json, table.md and chart.svg to `out`."""
    doc["workloads"] = {w.key: w.what for w in WORKLOADS}
    rows = summarize(doc["runs"], doc["backends"], doc["sizes"])
    doc["rows"] = rows
    doc["ratios"] = ratios(rows, doc["backends"])
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table_md(doc))
    with open(os.path.join(out, "chart.svg"), "w") as f:
        f.write(chart.svg(doc))
    return rows


def report_only(out):
    with open(os.path.join(out, "results.json")) as f:
        doc = json.load(f)
    for key, values in (("backends", [r["backend"] for r in doc["runs"]]),
                        ("sizes", sorted(r["size"] for r in doc["runs"]))):
        if key not in doc:
            doc[key] = list(dict.fromkeys(values))
    write_outputs(doc, out)
    log(f"rewrote {out}/table.md, results.json, chart.svg")
    return 0


def build_of(binary):
    """Which source the binary was built from: the git commit of the checkout around it."""
    d = os.path.dirname(os.path.abspath(binary))
    while d != "/" and not os.path.exists(os.path.join(d, "Cargo.toml")):
        d = os.path.dirname(d)
    head = run_cmd(["git", "-C", d, "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    if not head:
        return f"built in {d}"
    dirty = run_cmd(["git", "-C", d, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                    check=False).stdout.strip()
    return f"commit {head}" + (" plus uncommitted changes in src/" if dirty else "")


def main():
    ap = argparse.ArgumentParser(description="vhost-netmem vs DPDK vhost PMD benchmark")
    ap.add_argument("--quick", action="store_true", help="a few seconds per row, one repeat")
    ap.add_argument("--repeat", type=int, default=None, help="repeats per row (default 3, quick 1)")
    ap.add_argument("--out", default=None, help="output folder (default results/<timestamp>)")
    ap.add_argument("--peer", action="append", default=[], metavar="NAME=COMMAND",
                    help="another backend; {socket} and {tap} are replaced (TAP rows)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/vhost-netmem"))
    ap.add_argument("--only", default="", help="comma-separated workloads (default all)")
    ap.add_argument("--sizes", default="64,1500")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                    help="another vhost-netmem build measured in every row beside this one "
                         "(e.g. the commit before a change), backends alternating")
    ap.add_argument("--perf", action="store_true",
                    help="profile vhost-netmem in every row with perf (cpu-clock); the hottest "
                         "symbols go into table.md, full reports into logs/*.perf.txt")
    ap.add_argument("--busy-poll-usecs", type=int, default=50)
    ap.add_argument("--flood-batch", type=int, default=64)
    ap.add_argument("--flood-gap-us", type=float, default=20)
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per measurement (default 6, quick 1)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before measuring (default 2, quick 0.5)")
    ap.add_argument("--report-only", metavar="DIR", default=None,
                    help="rewrite table.md, chart.svg and the summary in DIR/results.json from its runs")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    cfg = ap.parse_args()
    if cfg.report_only:
        return report_only(cfg.report_only)
    cfg.repeat = cfg.repeat or (1 if cfg.quick else 3)
    cfg.warmup = cfg.warmup if cfg.warmup is not None else (0.5 if cfg.quick else 2.0)
    cfg.duration = cfg.duration if cfg.duration is not None else (1.0 if cfg.quick else 6.0)
    cfg.sizes = [int(s) for s in cfg.sizes.split(",")]
    started = datetime.datetime.now()
    out = cfg.out or os.path.join(ROOT, "results", started.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    logdir = os.path.join(out, "logs")
    shutil.rmtree(logdir, ignore_errors=True)
    os.makedirs(logdir)
    tmp = tempfile.mkdtemp(prefix="vnmbench.")
    TMPDIRS.append(tmp)

    if not os.access(cfg.bin, os.X_OK):
        raise BenchError(f"{cfg.bin} is not an executable (cargo build --release)")
    build = build_of(cfg.bin)
    # Run a private copy: a rebuild of target/release during the run must not change
    # the binary between rows.
    private = os.path.join(tmp, "vhost-netmem")
    shutil.copy2(cfg.bin, private)
    cfg.bin = private
    helptext = run_cmd([cfg.bin, "--help"]).stdout

    backends = [Backend("vhost-netmem", "vhost-netmem")]
    skipped_reasons = []
    if "--busy-poll" in helptext:
        backends.append(Backend(f"vhost-netmem bp{cfg.busy_poll_usecs}", "vhost-netmem",
                                ["--busy-poll", str(cfg.busy_poll_usecs)]))
    else:
        skipped_reasons.append("busy-poll rows pending: this vhost-netmem has no --busy-poll")
    if "--xdp" not in helptext:
        why = "this vhost-netmem has no --xdp (the AF_XDP uplink is not on main yet)"
        for b in backends:
            b.skip.update({"xdp-tx": why, "xdp-rx": why})
        skipped_reasons.append(f"AF_XDP rows of vhost-netmem skipped: {why}")
    for spec in cfg.compare:
        name, sep, path = spec.partition("=")
        if not sep or not name or not os.access(path, os.X_OK):
            raise BenchError(f"--compare {spec!r}: expected NAME=PATH of a vhost-netmem binary")
        # A private copy, as for --bin.
        copy = os.path.join(tmp, f"vhost-netmem-{len(backends)}")
        shutil.copy2(path, copy)
        other = Backend(name, "vhost-netmem", binary=copy)
        other_help = run_cmd([copy, "--help"]).stdout
        for wl in WORKLOADS:
            if wl.key == "ring-rx" and "generator" not in other_help:
                other.skip[wl.key] = f"{name} has no --uplink generator"
        backends.append(other)
    backends.append(Backend("dpdk-vhost", "dpdk"))
    for spec in cfg.peer:
        name, sep, command = spec.partition("=")
        if not sep or not name or "{socket}" not in command:
            raise BenchError(f"--peer {spec!r}: expected NAME=COMMAND with a {{socket}} placeholder")
        backends.append(Backend(name, "peer", command=command))
    for s in skipped_reasons:
        log(s)

    only = set(cfg.only.split(",")) - {""}
    workloads = [w for w in WORKLOADS if not only or w.key in only]
    runs, serial = [], 0
    la_start = open("/proc/loadavg").read().split()[:3]
    t_start = time.monotonic()
    for wl in workloads:
        for size in cfg.sizes:
            for rep in range(cfg.repeat):
                for b in backends:  # alternate the backends within each repeat
                    ok, why = b.supports(wl)
                    if not ok:
                        if rep == 0:
                            runs.append({"backend": b.name, "workload": wl.key, "size": size,
                                         "repeat": rep, "skipped": why})
                        continue
                    serial += 1
                    r = run_one(cfg, b, wl, size, rep, tmp, logdir, serial)
                    runs.append(r)
                    if "error" in r:
                        log(f"{b.name:22} {wl.key:8} {size:5} B  FAILED: {r['error']}")
                    else:
                        extra = "; ".join(r["notes"])
                        log(f"{b.name:22} {wl.key:8} {size:5} B  {r['pps'] / 1e6:7.3f} Mpps "
                            f"{r['gbps']:6.2f} Gbit/s  cpu {r['backend_cpu_util']:.0%}"
                            + (f"  [{extra}]" if extra else ""))
    doc = {
        "meta": {
            "mode": "quick" if cfg.quick else "full",
            "started": started.isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "command": cfg.command or shlex.join(["ci/bench.sh"] + sys.argv[1:]),
            "machine": f"{os.cpu_count()} CPUs, {os.uname().release}",
            "loadavg_start": la_start,
            "loadavg_end": open("/proc/loadavg").read().split()[:3],
            "repeat": cfg.repeat, "duration_s": cfg.duration, "warmup_s": cfg.warmup,
            "vhost_netmem_version": version_of([cfg.bin, "--version"]),
            "vhost_netmem_build": build,
            "dpdk_version": version_of(["dpkg-query", "-W", "-f=${Version}", "dpdk"]),
            "flood": {"mode": "packet", "batch": cfg.flood_batch, "gap_us": cfg.flood_gap_us},
            "skipped_reasons": skipped_reasons,
        },
        "backends": [b.name for b in backends],
        "sizes": cfg.sizes,
        "runs": runs,
    }
    rows = write_outputs(doc, out)
    log(f"wrote {out}/table.md, results.json, chart.svg ({doc['meta']['elapsed_s']} s)")
    failed = [r for r in rows if "errors" in r]
    if failed:
        for r in failed:
            log(f"FAILED {r['backend']} {r['workload']} {r['size']} B: {r['errors'][0]}")
        return 1
    return 0


def on_signal(sig, _frm):
    raise KeyboardInterrupt(f"signal {sig}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    rc = 1
    try:
        rc = main()
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        rc = 130
    finally:
        PROCS.stop_all()
        NETNS.delete_all()
        for d in TMPDIRS:
            shutil.rmtree(d, ignore_errors=True)
    sys.exit(rc)
