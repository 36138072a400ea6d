"""Medians per (proto, conns, target) from benches/load.sh results, with
the ratios of sluice to nginx and haproxy."""
import csv
import statistics
import sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1])))
groups = defaultdict(list)
for r in rows:
    if not r["requests"]:
        continue
    groups[(r["proto"], int(r["conns"]), r["target"])].append(r)

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

summary = {}
for key, rs in groups.items():
    rps = med([int(r["requests"]) / (int(r["duration_us"]) / 1e6) for r in rs])
    p50 = med([int(r["p50_us"]) for r in rs if r["p50_us"]])
    p99 = med([int(r["p99_us"]) for r in rs if r["p99_us"]])
    cpu = med([int(r["sut_ticks"]) / int(r["clk_tck"]) * 1e6 / int(r["requests"]) for r in rs])
    errs = sum(int(r["errors"] or 0) + int(r["non2xx"] or 0) for r in rs)
    summary[key] = dict(n=len(rs), rps=rps, p50=p50, p99=p99, cpu=cpu, errs=errs)

print("| proto | conns | target | runs | req/s (median) | vs nginx | vs haproxy | p50 µs | p99 µs | CPU µs/req | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (proto, conns, target) in sorted(summary):
    s = summary[(proto, conns, target)]
    ng = summary.get((proto, conns, "nginx"), {}).get("rps")
    hp = summary.get((proto, conns, "haproxy"), {}).get("rps")
    ratio = lambda peer: f"{s['rps'] / peer:.2f}" if peer else "-"
    fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
    print(f"| {proto} | {conns} | {target} | {s['n']} | {fmt(s['rps'])} | {ratio(ng)} | {ratio(hp)} | "
          f"{fmt(s['p50'])} | {fmt(s['p99'])} | {fmt(s['cpu'], 2)} | {s['errs']} |")
full = [k for k in summary if k[2] == "sluice"]
for proto, conns, _ in sorted(full):
    m = summary.get((proto, conns, "sluice-minimal"))
    if m:
        cost = 1 - summary[(proto, conns, "sluice")]["rps"] / m["rps"]
        print(f"\ninline work (split + sticky hash + stats + Prometheus), {proto} {conns} conns: "
              f"{cost * 100:.1f} % of throughput against one backend and no sticky key")
