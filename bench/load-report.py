#!/usr/bin/env python3
"""The report of `bench/run --load`: per phase, the medians over its runs of the window's put
latency and etcd's WAL fsync and commit p99, the backup's wall time and CPU per GiB, and the
ratios to the no-backup phase."""
import platform
import statistics
import sys

phases, results, out, size, runs, rate, db = sys.argv[1:]
rows = {}
for line in open(phases):
    f = line.rstrip("\n").split("\t")
    rows.setdefault(f[0], []).append([float(x) for x in f[1:]])
cpu = {}
for line in open(results):
    case, wall, rss, c, etcd, s3 = line.rstrip("\n").split("\t")
    cpu.setdefault(case, []).append((float(wall), float(c), int(rss), float(etcd)))
gib = int(db) / 2**30
med = lambda name, i: statistics.median(r[i] for r in rows[name])
base = "no backup"
table = ["| phase | window s | puts | put p50 ms | put p99 ms | put max ms | WAL fsync p99 ms | "
         "commit p99 ms | backup CPU s/GiB | etcd CPU s |", "|---|---|---|---|---|---|---|---|---|---|"]
for name in rows:
    c = cpu.get(name)
    per_gib = f"{statistics.median(x[1] for x in c) / gib:.2f}" if c else "—"
    etcd = f"{statistics.median(x[3] for x in c):.2f}" if c else "—"
    table.append(f"| {name} | {med(name, 0):.1f} | {med(name, 1):.0f} | {med(name, 3):.2f} | "
                 f"{med(name, 4):.2f} | {med(name, 5):.1f} | {med(name, 6):.2f} | {med(name, 7):.2f} "
                 f"| {per_gib} | {etcd} |")
quiet = ["| without load | wall s | CPU s | CPU s/GiB | peak RSS MiB |", "|---|---|---|---|---|"]
for case, c in cpu.items():
    if case.endswith("no load"):
        wall = statistics.median(x[0] for x in c)
        cs = statistics.median(x[1] for x in c)
        rss = statistics.median(x[2] for x in c) / 1024
        quiet.append(f"| {case[:-len(', no load')]} | {wall:.2f} | {cs:.2f} | {cs / gib:.2f} | {rss:.1f} |")
ratios = ["| phase / no backup | put p99 | WAL fsync p99 | goal |", "|---|---|---|---|"]
for name in rows:
    if name == base:
        continue
    goal = "≤ 1.2" if name.startswith("etcdguard") else "—"
    ratios.append(f"| {name} | {med(name, 4) / med(base, 4):.2f} | {med(name, 6) / med(base, 6):.2f} | {goal} |")
text = "\n".join([
    f"# Benchmark: a {int(size)} MiB backup under client load", "",
    "Produced by `bench/run --load`: a real etcd 3.5 (TLS, fsync on) filled to the size below, "
    f"with `bench-load` running {rate} puts/s of 4 KiB values (open loop), a range read per ten "
    "puts and a watch; the snapshot directory is on the same file system as etcd's data dir, as "
    "on a default kubeadm node. Each phase's window is the backup's run (15 s without one); put "
    "latency is what the client saw inside it, WAL fsync and backend commit p99 come from etcd's "
    "own histograms over the window. Medians over the runs.", "",
    f"- snapshot file {int(db) / 2**20:.0f} MiB; {runs} runs per phase, alternating; "
    f"{platform.release()}", "",
    *table, "", *ratios, "", *quiet, "",
])
open(out, "w").write(text)
print(text)
