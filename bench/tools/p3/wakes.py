import sys, json, subprocess, re, collections
data = sys.argv[1]
meta = json.load(open(data + ".json"))
groups = [[int(p) for p in g] for g in meta["groups"]]
acq = sum(1 for s in meta["stamps"] if s[2] == "a")
out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,tid,event,trace"], capture_output=True, text=True).stdout
c = collections.Counter(); sw = collections.Counter()
names = {}
for l in out.splitlines():
    m = re.match(r"\s*(.+?)\s+(\d+)/(\d+)\s+(\S+):\s+(.*)", l)
    if not m: continue
    pid, tid, ev, rest = int(m[2]), int(m[3]), m[4], m[5]
    role = "backend" if m[1].strip() == "postgres" else ("main" if pid == tid else "worker")
    if ev.endswith("sched_wakeup"):
        wc = re.search(r"comm=(\S+)", rest)[1]
        c[(role, wc)] += 1
    elif ev.endswith("sched_switch"):
        st = re.search(r"prev_state=(\S+)", rest)[1]
        sw[(role, st)] += 1
print(data, "per acquisition (both processes):")
print("  wakeups (waker role -> wakee comm):", ", ".join(f"{k[0]}->{k[1]} {v/acq:.2f}" for k, v in sorted(c.items())))
print("  switches out (role, state):", ", ".join(f"{k[0]}/{k[1]} {v/acq:.2f}" for k, v in sorted(sw.items())))
