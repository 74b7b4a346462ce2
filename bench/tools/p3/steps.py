import sys, json, subprocess, re, statistics, bisect
data = sys.argv[1]
meta = json.load(open(data + ".json"))
off = meta["off"]
groups = [[int(p) for p in g] for g in meta["groups"]]
child = [g[-1] for g in groups]
backs = [g[:-1] for g in groups]
out = subprocess.run(["perf", "script", "-i", data, "--ns", "-F", "pid,tid,time,event,trace"], capture_output=True, text=True).stdout
ev = []  # (t, pid, tid, name, extra)
for l in out.splitlines():
    m = re.match(r"\s*(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)", l)
    if not m: continue
    pid, tid, t, name, rest = int(m[1]), int(m[2]), m[3], m[4], m[5]
    s, ns = t.split(".")
    tn = int(s) * 10**9 + int(ns.ljust(9, "0")) + off
    ev.append((tn, pid, tid, name, rest))
ev.sort()
ts = [e[0] for e in ev]
def first(after, pred):
    i = bisect.bisect_right(ts, after)
    for e in ev[i:i+20000]:
        if pred(e): return e
    return None
st = sorted(tuple(x) for x in meta["stamps"])
segs = {k: [] for k in ["r->send", "send->brecv", "brecv->kill", "kill->wsend", "wsend->crecv", "crecv->a", "total"]}
for j, (t0, x, w) in enumerate(st):
    if w != "r": continue
    nx = next((e for e in st[j+1:] if e[2] == "a"), None)
    if not nx or nx[1] == x: continue
    y = 1 - x; t6 = nx[0]
    e1 = first(t0, lambda e: e[1] == child[x] and e[3] == "syscalls:sys_enter_sendto")
    if not e1: continue
    e2 = first(e1[0], lambda e: e[1] in backs[x] and e[3] == "syscalls:sys_exit_recvfrom" and not re.search(r"0xf+|0x0+$", e[4]))
    e3 = first(e2[0], lambda e: e[1] in backs[x] and e[3] == "syscalls:sys_enter_kill")
    if not e3 or e3[0] > t6: continue
    e4 = first(e3[0], lambda e: e[1] in backs[y] and e[3] == "syscalls:sys_enter_sendto")
    e5 = first(e4[0], lambda e: e[1] == child[y] and e[3] == "syscalls:sys_exit_recvfrom" and not re.search(r"0xf+|0x0+$", e[4]))
    if not e5 or e5[0] > t6: continue
    pts = [t0, e1[0], e2[0], e3[0], e4[0], e5[0], t6]
    for k, a, b in zip(list(segs)[:6], pts, pts[1:]):
        segs[k].append(b - a)
    segs["total"].append(t6 - t0)
print(data, "n", len(segs["total"]))
for k, v in segs.items():
    v.sort()
    print(f"  {k:14} p50 {statistics.median(v)/1000:7.1f}  p25 {v[len(v)//4]/1000:7.1f}  p75 {v[len(v)*3//4]/1000:7.1f}")
