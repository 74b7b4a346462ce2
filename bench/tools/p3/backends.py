import sys, json, subprocess, re, statistics, bisect
exec(open(__import__('os').path.join(__import__('os').path.dirname(__file__), 'place.py')).read().split("st = sorted")[0].replace("data = sys.argv[1]", "data = sys.argv[1]"))
st = sorted(tuple(x) for x in meta["stamps"])
a1=[];a2=[];a3=[]
for j, (t0, x, w) in enumerate(st):
    if w != "r": continue
    nx = next((e for e in st[j+1:] if e[2] == "a"), None)
    if not nx or nx[1] == x: continue
    y=1-x
    r = first(t0, lambda e: e[1] in backs[x] and e[4].endswith("sys_exit_recvfrom") and not re.search(r"0xf+$", e[5]))
    k = first(t0, lambda e: e[1] in backs[x] and e[4].endswith("sys_enter_kill"))
    s = first(k[0], lambda e: e[1] in backs[x] and e[4].endswith("sys_enter_sendto"))
    ws = first(k[0], lambda e: e[1] in backs[y] and e[4].endswith("sys_enter_sendto"))
    if not (r and k and s and ws) or ws[0] > nx[0]: continue
    a1.append(k[0]-r[0]); a2.append(s[0]-k[0]); a3.append(ws[0]-s[0])
m = lambda v: statistics.median(v)/1000
print(f"{data}: releaser backend recv->kill {m(a1):.1f}, kill->its own reply {m(a2):.1f}; its reply->waiter backend reply {m(a3):.1f} (n={len(a1)})")
