import sys, json, subprocess, re, statistics, bisect, collections
data = sys.argv[1]
meta = json.load(open(data + ".json")); off = meta["off"]
groups = [[int(p) for p in g] for g in meta["groups"]]
child = [g[-1] for g in groups]; backs = [g[:-1] for g in groups]
out = subprocess.run(["perf", "script", "-i", data, "--ns", "-F", "pid,tid,cpu,time,event,trace"], capture_output=True, text=True).stdout
ev = []
for l in out.splitlines():
    m = re.match(r"\s*(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)", l)
    if not m: continue
    s, ns = m[4].split(".")
    ev.append((int(s)*10**9+int(ns.ljust(9,"0"))+off, int(m[1]), int(m[2]), int(m[3]), m[5], m[6]))
ev.sort(); ts = [e[0] for e in ev]
def first(after, pred):
    i = bisect.bisect_right(ts, after)
    for e in ev[i:i+20000]:
        if pred(e): return e
st = sorted(tuple(x) for x in meta["stamps"])
res = collections.defaultdict(list)
for j, (t0, x, w) in enumerate(st):
    if w != "r": continue
    nx = next((e for e in st[j+1:] if e[2] == "a"), None)
    if not nx or nx[1] == x: continue
    y = 1-x; t6 = nx[0]
    k = first(t0, lambda e: e[1] in backs[x] and e[4].endswith("sys_enter_kill"))
    if not k or k[0] > t6: continue
    s = first(k[0], lambda e: e[1] in backs[y] and e[4].endswith("sys_enter_sendto"))
    if not s or s[0] > t6: continue
    same = "same" if s[3] == k[3] else "other"
    res[same].append(s[0]-k[0]); res[same+"-total"].append(t6-t0)
n = sum(len(v) for k, v in res.items() if not k.endswith("total"))
for k in ["same", "other"]:
    v = res[k]
    if v: print(f"{data}: waiter backend on {k} CPU as releaser backend: {len(v)/n:.0%}  kill->wsend p50 {statistics.median(v)/1000:.1f}  total p50 {statistics.median(res[k+'-total'])/1000:.1f}")
