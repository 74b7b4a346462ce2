#!/usr/bin/env python3
"""CPU time (schedstat ns) per acquisition of each child (all threads) and its
backends over the run. usage: cpu.py KIND N"""
import subprocess, sys, os, time, threading, glob
kind, n = sys.argv[1], sys.argv[2]
exe = os.environ.get("EXE", "target/release/bench")
url = "postgres://postgres@127.0.0.1:5432/postgres"
key = os.environ.get("KEY", "987654321")
kids = [subprocess.Popen([exe, "handover-child", kind, url, key, n, "3000", "1000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
for k in kids: assert k.stdout.readline().strip() == "ready"
def ports(pid):
    s = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
    return [int(l.split()[3].rsplit(":",1)[1]) for l in s.splitlines() if f"pid={pid}," in l and l.split()[4].endswith(":5432")]
bpids = []
for k in kids:
    q = "select pid from pg_stat_activity where client_port in (%s)" % ",".join(map(str, ports(k.pid)))
    bpids.append([int(x) for x in subprocess.run(["psql", url, "-Atc", q], capture_output=True, text=True).stdout.split()])
def rd(path):
    try: return int(open(path).read().split()[0])
    except Exception: return None
def child_cpu(pid):
    tot = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        v = rd(f); tot += v or 0
    return tot
start = {("c", i): child_cpu(k.pid) for i, k in enumerate(kids)}
for i, bs in enumerate(bpids):
    for b in bs: start[("b", i, b)] = rd(f"/proc/{b}/schedstat")
last = dict(start)
stop = False
def poll():
    while not stop:
        for i, k in enumerate(kids):
            v = child_cpu(k.pid)
            if v: last[("c", i)] = max(v, last[("c", i)])
        for i, bs in enumerate(bpids):
            for b in bs:
                v = rd(f"/proc/{b}/schedstat")
                if v: last[("b", i, b)] = v
        time.sleep(0.005)
th = threading.Thread(target=poll); th.start()
for k in kids: k.stdin.write("go\n"); k.stdin.flush()
acq = 0; evs = []
for i, k in enumerate(kids):
    for l in k.stdout:
        l = l.strip()
        if l == "done": break
        w, t = l.split(); evs.append((int(t), i, w)); acq += w == "a"
stop = True; th.join()
for k in kids: k.wait()
evs.sort()
s = []
for j, (t0, x, w) in enumerate(evs):
    if w != "r": continue
    nx = next((e for e in evs[j+1:] if e[2] == "a"), None)
    if nx and nx[1] != x: s.append(nx[0] - t0)
s.sort()
res = {k: (last[k] - start[k]) / acq / 1000 for k in start}
c = sum(v for k, v in res.items() if k[0] == "c"); b = sum(v for k, v in res.items() if k[0] == "b")
print(f"{kind:9} acq={acq} p50={s[len(s)//2]/1000:6.1f}us  cpu/acq: children {c:6.1f}us backends {b:5.1f}us  " + " ".join(f"{k}:{v:.1f}" for k, v in res.items()))
