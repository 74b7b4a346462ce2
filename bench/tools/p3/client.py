import sys, json, subprocess, re, statistics, bisect
exec(open(__import__('os').path.join(__import__('os').path.dirname(__file__), 'place.py')).read().split("st = sorted")[0])
st = sorted(tuple(x) for x in meta["stamps"])
A=[];B=[];C=[]
for j, (t0, x, w) in enumerate(st):
    if w != "r": continue
    nx = next((e for e in st[j+1:] if e[2] == "a"), None)
    if not nx or nx[1] == x: continue
    y = 1-x; t6 = nx[0]
    s = first(t0, lambda e: e[1] in backs[y] and e[4].endswith("sys_enter_sendto"))
    if not s or s[0] > t6: continue
    r = first(s[0], lambda e: e[1] == child[y] and e[4].endswith("sys_exit_recvfrom") and not re.search(r"0xf+$", e[5]))
    if not r or r[0] > t6: continue
    wk = first(r[0], lambda e: e[1] == child[y] and e[4].endswith("sched_wakeup") and f"pid={child[y]} " in e[5])
    if not wk or wk[0] > t6: continue
    A.append(r[0]-s[0]); B.append(wk[0]-r[0]); C.append(t6-wk[0])
m = lambda v: statistics.median(v)/1000
print(f"{data}: waiter backend sendto -> client read {m(A):.1f}; read -> main thread woken {m(B):.1f}; woken -> grant stamp {m(C):.1f} (n={len(A)})")
