#!/usr/bin/env python3
"""A handover-child pair under perf tracepoints: trace_pair.py KIND N OUT.data (see README.md)."""
import subprocess, sys, os, time, signal
kind, n = sys.argv[1], sys.argv[2]
out = sys.argv[3]
exe = os.environ.get("EXE", "target/release/bench")
url = "postgres://postgres@127.0.0.1:5432/postgres"
kids = [subprocess.Popen([exe, "handover-child", kind, url, "987654321", n, "3000", "1000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
for k in kids: assert k.stdout.readline().strip() == "ready"
def ports(pid):
    s = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
    return [int(l.split()[3].rsplit(":",1)[1]) for l in s.splitlines() if f"pid={pid}," in l and l.split()[4].endswith(":5432")]
pids = []; groups = []
for k in kids:
    q = "select pid from pg_stat_activity where client_port in (%s)" % ",".join(map(str, ports(k.pid)))
    pids += subprocess.run(["psql", url, "-Atc", q], capture_output=True, text=True).stdout.split()
    pids.append(str(k.pid))
    groups.append(pids[len(pids) - len(ports(k.pid)) - 1:])
p = subprocess.Popen(["perf", "record", "-q", "-k", "monotonic", "-e", "syscalls:sys_enter_sendto,syscalls:sys_exit_recvfrom,syscalls:sys_enter_kill,sched:sched_wakeup,sched:sched_switch", "-o", out, "-p", ",".join(pids)])
time.sleep(0.5)
for k in kids: k.stdin.write("go\n"); k.stdin.flush()
stamps = []
for i, k in enumerate(kids):
    for l in k.stdout:
        l = l.strip()
        if l == "done": break
        w, t = l.split(); stamps.append((int(t), i, w))
p.send_signal(signal.SIGINT); p.wait()
for k in kids: k.wait()
print("pids", pids)
import json
off = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
json.dump({"stamps": stamps, "groups": groups, "off": off}, open(out + ".json", "w"))
