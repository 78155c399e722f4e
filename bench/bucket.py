#!/usr/bin/env python3
"""`bench/run --bucket`: etcdguard's remote work for one node and one cluster in a bucket
crowded by many clusters (examples/bench-bucket.rs), beside the same work in a bucket holding
only that cluster. Each operation runs `runs` times against both buckets, alternating (wall
time and peak RSS), then once more through a counting proxy (its S3 requests: LIST calls and
the keys and prefixes they returned, GETs, others).

  bench/bucket.py ETCDGUARD S3S_FS GENERATOR WORK RUNS OUT
"""

import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

G, S3FS, GEN, WORK, RUNS, OUT = sys.argv[1:]
RUNS = int(RUNS)
BUCKET, PREFIX, NODE = "bench-bucket", "c07/", "c07-cp1"
KEY_ID, SECRET = "AKIABENCHMARK0001", "bench-secret-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)


def count_objects(root, rel=""):
    return sum(len(f) for _, _, f in os.walk(os.path.join(root, BUCKET, rel)))


class Counter(http.server.BaseHTTPRequestHandler):
    """Forwards every request to the S3 server as is (the signature covers the Host header,
    which is kept) and counts it."""

    protocol_version = "HTTP/1.1"
    upstream = 0
    seen = []

    def log_message(self, *a):
        pass

    def forward(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        c = http.client.HTTPConnection("127.0.0.1", Counter.upstream)
        c.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
        r = c.getresponse()
        data = r.read()
        listing = self.command == "GET" and ("list-type=2" in self.path or "delimiter=" in self.path)
        keys = len(re.findall(rb"<Key>", data)) + len(re.findall(rb"<CommonPrefixes>", data)) if listing else 0
        kind = "UPLOADS" if "uploads" in self.path.split("?", 1)[-1] else "LIST" if listing else self.command
        Counter.seen.append((kind, self.path, keys))
        self.send_response_only(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = forward


def config(name, port, state):
    path = os.path.join(WORK, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f"""state_dir = "{state}"
schedule = "@hourly"
catch_up = false
metrics_file = "{WORK}/{name}.prom"
[etcd]
endpoint = "https://127.0.0.1:1"
[local_storage]
path = "{WORK}/snapshots"
keep_hourly = 48
[remote_storage]
bucket = "{BUCKET}"
prefix = "{PREFIX}"
per = "cluster"
endpoint = "http://127.0.0.1:{port}"
region = "us-east-1"
force_path_style = true
credentials_file = "{WORK}/creds"
keep_hourly = 48
keep_daily = 90
""")
    return path


def timed(cmd):
    """Wall seconds (measured here: /usr/bin/time's are hundredths) and peak RSS KiB of one
    run of a command."""
    out = os.path.join(WORK, "time.out")
    t = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", out, *cmd],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit(f"{cmd} failed: {r.stderr.decode()[-2000:]}")
    wall = time.monotonic() - t
    return wall, int(open(out).read().split()[-1])


def daemon(cfg):
    """The daemon from exec until its start-up maintenance is done (the metrics file is
    written then, and not before); its peak RSS until then."""
    prom = cfg.replace(".toml", ".prom")
    if os.path.exists(prom):
        os.remove(prom)
    trace = os.path.join(WORK, "daemon.trace")
    if os.path.exists(trace):
        os.remove(trace)  # else the last run's lines are read before strace starts this one's
    p = subprocess.Popen(["strace", "-f", "--seccomp-bpf", "-ttt", "-e", "trace=execve,rename",
                          "-o", trace, G, "--config", cfg, "run"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = done = pid = None
    deadline = time.monotonic() + 120
    while done is None and time.monotonic() < deadline:
        time.sleep(0.01)
        if not os.path.exists(trace):
            continue
        for line in open(trace):
            f = line.split()
            if len(f) > 2 and f[2].startswith("execve(") and start is None:
                start, pid = float(f[1]), int(f[0])
            if len(f) > 2 and f[2].startswith("rename(") and prom in line:
                done = float(f[1])
    rss = int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")))
    os.kill(pid, signal.SIGTERM)
    p.wait()
    if done is None:
        sys.exit("the daemon's start-up maintenance did not end in 120 s")
    return done - start, rss


def main():
    for v in [v for v in os.environ if v.startswith("AWS_")]:
        del os.environ[v]
    crowded, alone = os.path.join(WORK, "crowded"), os.path.join(WORK, "alone")
    state = os.path.join(WORK, "state")
    records = os.path.join(state, "records.json")
    os.makedirs(os.path.join(crowded, BUCKET))
    t = time.monotonic()
    subprocess.run([GEN, os.path.join(crowded, BUCKET), records, BUCKET], check=True, stdout=subprocess.DEVNULL)
    gen_s = time.monotonic() - t
    shutil.copytree(os.path.join(crowded, BUCKET, PREFIX), os.path.join(alone, BUCKET, PREFIX))
    saved = open(records).read()
    with open(os.path.join(WORK, "creds"), "w") as f:
        f.write(f"[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    os.chmod(os.path.join(WORK, "creds"), 0o600)
    servers, ports = [], {}
    for name, root in (("crowded", crowded), ("alone", alone)):
        ports[name] = free_port()
        servers.append(subprocess.Popen([S3FS, "--host", "127.0.0.1", "--port", str(ports[name]),
                                         "--access-key", KEY_ID, "--secret-key", SECRET, root],
                                        stdout=open(os.path.join(WORK, f"s3-{name}.log"), "w"), stderr=subprocess.STDOUT))
        wait_port(ports[name])
    Counter.upstream = ports["crowded"]
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counter)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    cfgs = {n: config(n, p, state) for n, p in ports.items()}
    cfgs["counted"] = config("counted", proxy.server_address[1], state)
    node_dir, cluster_dir = f"{PREFIX}{NODE}/", f"{PREFIX}_cluster/"
    ops = [
        ("daemon start-up maintenance (probe, retries, retention: node + _cluster)", "daemon", [node_dir, cluster_dir]),
        ("prune (local + remote retention: node + _cluster)", ["prune"], [node_dir, cluster_dir]),
        ("prune --dry-run", ["prune", "--dry-run"], [node_dir, cluster_dir]),
        ("records --remote --node (one node)", ["records", "--remote", "--node", NODE, "--output", "json"], [node_dir]),
        ("records --remote (the cluster: 3 nodes + _cluster)", ["records", "--remote", "--output", "json"], [PREFIX]),
        ("records --remote --limit 10 (the cluster)", ["records", "--remote", "--limit", "10", "--output", "json"], [PREFIX]),
    ]

    def run(op, cfg):
        with open(records, "w") as f:
            f.write(saved)
        if op == "daemon":
            return daemon(cfg)
        return timed([G, "--config", cfg, *op])

    data = {}
    for _ in range(RUNS):
        for name, op, _ in ops:
            for where in ("crowded", "alone"):
                data.setdefault((name, where), []).append(run(op, cfgs[where]))
    counted = {}
    for name, op, _ in ops:
        Counter.seen = []
        run(op, cfgs["counted"])
        counted[name] = list(Counter.seen)
    proxy.shutdown()
    for s in servers:
        s.terminate()
        s.wait()
    # The proof: every LIST asked for a prefix inside the operation's own.
    for name, _, _ in ops:
        for kind, path, _ in counted[name]:
            if kind == "LIST":
                m = re.search(r"prefix=([^&]*)", path)
                prefix = urllib.parse.unquote(m.group(1)) if m else ""
                assert prefix.startswith(PREFIX), f"{name} listed outside {PREFIX}: {path}"
    total = count_objects(crowded)
    rows = []
    for name, _, dirs in ops:
        c, a = data[(name, "crowded")], data[(name, "alone")]
        seen = counted[name]
        lists = [s for s in seen if s[0] == "LIST"]
        gets = sum(1 for s in seen if s[0] == "GET")
        others = len(seen) - len(lists) - gets
        under = sum(count_objects(crowded, d) for d in dirs)
        rows.append(f"| {name} | {total} | {under} | {statistics.median(x[0] for x in c):.3f} "
                    f"| {statistics.median(x[0] for x in a):.3f} | {max(x[1] for x in c) / 1024:.1f} "
                    f"| {len(lists)} / {sum(s[2] for s in lists)} | {gets} | {others} |")
    calls = []
    for name, _, _ in ops:
        for kind, path, keys in counted[name]:
            if kind == "LIST":
                calls.append(f"- {name}: `GET {urllib.parse.unquote(path)}` → {keys} keys/prefixes")
    text = "\n".join([
        "# Benchmark: scale in the bucket", "",
        "Produced by `bench/run --bucket`. One bucket holds what 50 clusters of 3 control-plane nodes "
        "keep for months (`examples/bench-bucket.rs`: per node 48 hourly and 32 daily copies, per cluster "
        "60 daily copies under `_cluster/`, each a 4 KiB object and its JSON sidecar in etcdguard's layout "
        f"and format; {total} objects, written in {gen_s:.1f} s). The measured node is `{PREFIX}{NODE}/` "
        f"of the cluster `{PREFIX}` (`per = \"cluster\"`, `keep_hourly = 48`, `keep_daily = 90`: a steady "
        "state, retention finds nothing to delete). s3s-fs 0.14.1 (release) on loopback.", "",
        f"Wall time: median of {RUNS} runs; beside it the same operation against a bucket holding only "
        f"that cluster's {count_objects(alone)} objects (runs alternating). Peak RSS: the largest of the "
        "runs in the crowded bucket. Requests: one more run through a counting proxy (LIST calls / keys "
        "and common prefixes they returned; GETs of objects; other requests: HEAD, PUT and DELETE of "
        "the probe, ListMultipartUploads, which s3s-fs answers 501). The daemon is timed from exec until "
        "its start-up maintenance wrote the metrics file.", "",
        "| operation | objects in bucket | objects under its prefix | wall s (median) | wall s, bucket of that cluster only "
        "| peak RSS MiB | LIST calls / keys listed | GETs | other requests |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        "Every LIST the operations sent (the script checks that each asks for a prefix under "
        f"`{PREFIX}`):", "", *calls, "",
    ])
    open(OUT, "w").write(text)
    print(text)


main()
