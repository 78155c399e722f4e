#!/usr/bin/env python3
"""One phase of `bench/run --load`: the client put latency inside the window [t0, t1] and
etcd's WAL fsync and backend commit latency over the same window (the difference of its
histograms between two scrapes of /metrics). Prints one TSV line:
phase, seconds, puts, errors, p50 ms, p99 ms, max ms, WAL fsync p99 ms, commit p99 ms,
range p99 ms. With a seventh argument, also appends every put and range latency of the window
to that file (phase, kind, ms per line): the report pools them over the runs."""
import sys


def quantile(q, buckets):
    """histogram_quantile as Prometheus computes it, from cumulative (le, count) pairs."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return prev_le


def histogram(path, name):
    out = {}
    for line in open(path):
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def delta_p99(m0, m1, name):
    h0, h1 = histogram(m0, name), histogram(m1, name)
    return quantile(0.99, [(le, h1[le] - h0.get(le, 0.0)) for le in h1]) * 1000


def main():
    name, t0, t1, load, m0, m1 = sys.argv[1:7]
    samples = sys.argv[7] if len(sys.argv) > 7 else None
    t0, t1 = float(t0), float(t1)
    lat, ranges, errors = [], [], 0
    for line in open(load):
        at, ms, ok, kind = (line.rstrip("\n").split("\t") + ["p"])[:4]
        if t0 <= float(at) <= t1:
            (lat if kind == "p" else ranges).append(float(ms))
            errors += ok.strip() != "1"
    lat.sort()
    ranges.sort()
    if samples:
        with open(samples, "a") as f:
            f.writelines(f"{name}\tp\t{ms}\n" for ms in lat)
            f.writelines(f"{name}\tr\t{ms}\n" for ms in ranges)
    pick = lambda q, xs=lat: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
    wal = delta_p99(m0, m1, "etcd_disk_wal_fsync_duration_seconds")
    commit = delta_p99(m0, m1, "etcd_disk_backend_commit_duration_seconds")
    print("\t".join([name, f"{t1 - t0:.1f}", str(len(lat)), str(errors), f"{pick(0.5):.2f}",
                     f"{pick(0.99):.2f}", f"{lat[-1] if lat else float('nan'):.2f}",
                     f"{wal:.2f}", f"{commit:.2f}", f"{pick(0.99, ranges):.2f}"]))


main()
