#!/usr/bin/env python3
"""The report of `bench/run --load`: per phase, the medians over its runs of the window's put
and range latency and etcd's WAL fsync and commit p99, the backup's wall time and CPU per GiB,
the ratios to the no-backup phase against the goals (with the control: a second quiet window,
whose distance from the first is the machine's own noise), the put and range p99 of all runs'
latencies pooled, what pacing cost in wall time, and what paced each backup (its record's
highest and lowest pace, halvings, and the node's CPU pressure before and at worst)."""
import os
import platform
import statistics
import sys

phases, results, samples, out, size, runs, rate, db, pacing = sys.argv[1:]
rows = {}
for line in open(phases):
    f = line.rstrip("\n").split("\t")
    rows.setdefault(f[0], []).append([float(x) for x in f[1:]])
cpu = {}
for line in open(results):
    case, wall, rss, c, etcd, s3 = line.rstrip("\n").split("\t")
    cpu.setdefault(case, []).append((float(wall), float(c), int(rss), float(etcd)))
pooled = {}
for line in open(samples):
    name, kind, ms = line.rstrip("\n").split("\t")
    pooled.setdefault((name, kind), []).append(float(ms))
def p99(name, kind):
    xs = sorted(pooled.get((name, kind), []))
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else float("nan")
gib = int(db) / 2**30
med = lambda name, i: statistics.median(r[i] for r in rows[name])
base = "no backup"
table = ["| phase | window s | puts | put p50 ms | put p99 ms | put max ms | range p99 ms | "
         "WAL fsync p99 ms | commit p99 ms | backup CPU s/GiB | etcd CPU s |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
for name in rows:
    c = cpu.get(name)
    per_gib = f"{statistics.median(x[1] for x in c) / gib:.2f}" if c else "—"
    etcd = f"{statistics.median(x[3] for x in c):.2f}" if c else "—"
    table.append(f"| {name} | {med(name, 0):.1f} | {med(name, 1):.0f} | {med(name, 3):.2f} | "
                 f"{med(name, 4):.2f} | {med(name, 5):.1f} | {med(name, 8):.2f} | {med(name, 6):.2f} "
                 f"| {med(name, 7):.2f} | {per_gib} | {etcd} |")
quiet = ["| without load | wall s | CPU s | CPU s/GiB | CPU / etcdctl's | peak RSS MiB |",
         "|---|---|---|---|---|---|"]
ctl = cpu.get("etcdctl snapshot save, no load")
ctl_cpu = statistics.median(x[1] for x in ctl) if ctl else None
for case, c in cpu.items():
    if case.endswith("no load"):
        wall = statistics.median(x[0] for x in c)
        cs = statistics.median(x[1] for x in c)
        rss = statistics.median(x[2] for x in c) / 1024
        vs = f"{cs / ctl_cpu:.2f}" if ctl_cpu else "—"
        quiet.append(f"| {case[:-len(', no load')]} | {wall:.2f} | {cs:.2f} | {cs / gib:.2f} | {vs} | {rss:.1f} |")
ratios = ["| phase / no backup | put p99 | WAL fsync p99 | range p99 | put p99, runs' range | "
          "put p99, all runs pooled | range p99, all runs pooled | goals (put, WAL, range) |",
          "|---|---|---|---|---|---|---|---|"]
for name in rows:
    if name == base:
        continue
    goal = "≤ 1.2, ≤ 2, ≤ 1.2" if name.startswith("etcdguard") and "off" not in name else "—"
    per_run = sorted(r[4] / med(base, 4) for r in rows[name])
    ratios.append(f"| {name} | {med(name, 4) / med(base, 4):.2f} | {med(name, 6) / med(base, 6):.2f} "
                  f"| {med(name, 8) / med(base, 8):.2f} | {per_run[0]:.2f}–{per_run[-1]:.2f} "
                  f"| {p99(name, 'p') / p99(base, 'p'):.2f} | {p99(name, 'r') / p99(base, 'r'):.2f} | {goal} |")
cost = ["| under load | paced wall s | unpaced wall s (pacing = \"off\") | pacing cost |", "|---|---|---|---|"]
for paced in rows:
    unpaced = paced[:-1] + ", pacing off)" if paced.endswith(")") else None
    if paced.startswith("etcdguard") and "off" not in paced and unpaced in rows:
        a, b = med(paced, 0), med(unpaced, 0)
        cost.append(f"| {paced} | {a:.1f} | {b:.1f} | +{a - b:.1f} s ({a / b:.2f}×) |")
paces = {}
if os.path.exists(pacing):
    for line in open(pacing):
        case, mode, hi, lo, halvings, before, worst = line.rstrip("\n").split("\t")
        paces.setdefault(case, []).append((mode, hi, lo, halvings, before, worst))
MiB = lambda v: f"{int(v) / 2**20:.0f}" if v else "—"
pct = lambda v: f"{float(v):.0f}" if v else "—"
paced = ["| backup | mode | highest pace MiB/s, each run | lowest | halvings | CPU pressure % before → at worst |",
         "|---|---|---|---|---|---|"]
for case, ps in paces.items():
    if not case.startswith("etcdguard") or "off" in case:
        continue
    paced.append(f"| {case} | {ps[0][0]} | {', '.join(MiB(p[1]) for p in ps)} | "
                 f"{', '.join(MiB(p[2]) for p in ps)} | {', '.join(p[3] or '0' for p in ps)} | "
                 f"{', '.join(pct(p[4]) + ' → ' + pct(p[5]) for p in ps)} |")
def scheduler():
    """The active I/O scheduler of the disk holding the working directory."""
    st = os.stat(".")
    dev = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    for q in (f"{dev}/queue/scheduler", f"{dev}/../queue/scheduler"):
        if os.path.exists(q):
            return open(q).read().split("[")[-1].split("]")[0]
    return "unknown"


text = "\n".join([
    f"# Benchmark: a {int(size)} MiB backup under client load", "",
    "Produced by `bench/run --load`: a real etcd 3.5 (TLS, fsync on, metrics on "
    "`--listen-metrics-urls` as kubeadm serves them) filled to the size below, "
    f"with `bench-load` running {rate} puts/s of 4 KiB values (open loop), a range read per ten "
    "puts (alternately of the newest writes and of a page of the filled data) and a watch; the "
    "snapshot directory is on the same file system as etcd's data dir, as on a default kubeadm "
    "node; the S3 server keeps its files in memory (a real bucket's writes do not land on the "
    "etcd node's disk) and it runs at idle CPU priority (SCHED_IDLE: a real bucket's CPU is not the node's; it takes only the cycles etcd, its clients and etcdguard leave). etcdguard runs with no configuration beyond where etcd and the bucket are (its "
    "`metrics_url` is the one the manifest would give). Each phase's window is the backup's run "
    "(15 s without one); put and range latency are what the client saw inside it, WAL fsync and "
    "backend commit p99 come from etcd's own histograms over the window. Medians over the runs; "
    "the ratios also with every run's latencies pooled (one p99 over all of a phase's windows), "
    "and the control row is a second quiet window in each round, measured like the first: its "
    "distance from 1.00 is what this machine's own noise does to a ratio.",
    "",
    f"- snapshot file {int(db) / 2**20:.0f} MiB; {runs} runs per phase, alternating; "
    f"{platform.release()}; I/O scheduler of the disk: {scheduler()}", "",
    *table, "", *ratios, "", *cost, "", *quiet, "", *(paced + [""] if len(paced) > 2 else []),
])
open(out, "w").write(text)
print(text)
