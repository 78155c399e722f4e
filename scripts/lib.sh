# Shell helpers shared by the project's scripts (sourced, not run).

# The Debian mirror this machine already uses (never hard-coded in the project).
debian_mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { echo "cannot find the Debian mirror in /etc/apt sources" >&2; return 1; }
  printf '%s' "$uri"
}

# test_cache_dir: where test dependencies are cached, outside any checkout:
# $ETCDGUARD_TEST_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/etcdguard-test, else (no HOME)
# /var/cache/etcdguard-test.
test_cache_dir() {
  if [ -n "${ETCDGUARD_TEST_CACHE:-}" ]; then
    printf '%s' "$ETCDGUARD_TEST_CACHE"
  elif [ -n "${XDG_CACHE_HOME:-}" ]; then
    printf '%s/etcdguard-test' "$XDG_CACHE_HOME"
  elif [ -n "${HOME:-}" ]; then
    printf '%s/.cache/etcdguard-test' "$HOME"
  else
    printf '/var/cache/etcdguard-test'
  fi
}

# link_test_cache: makes $here/.cache a symlink to the test cache outside the checkout,
# $ETCDGUARD_TEST_CACHE or ${XDG_CACHE_HOME:-$HOME/.cache}/etcdguard-test, so builds of test
# dependencies (keyed by version inside) survive a fresh clone. A real .cache dir is kept.
link_test_cache() {
  local outside
  outside=$(test_cache_dir)
  if [ -L "$here/.cache" ] || [ ! -e "$here/.cache" ]; then
    mkdir -p "$outside"
    ln -sfn "$outside" "$here/.cache"
  fi
}

# kill_tree PID: PID and everything it started (children first), if still running.
kill_tree() {
  local p=$1 c
  [ -n "$p" ] || return 0
  for c in $(pgrep -P "$p" 2>/dev/null); do kill_tree "$c"; done
  kill "$p" 2>/dev/null || true
}

# A TCP port that was free on 127.0.0.1 a moment ago.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# make_pki DIR: an etcd PKI in kubeadm's layout (ca, server, peer, healthcheck-client), EC
# P-256, server/peer valid for 127.0.0.1, ::1 and localhost. Keys 0600.
make_pki() {
  local pki=$1
  mkdir -p "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj /CN=etcd-ca -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  _issue() { # name cn extendedKeyUsage
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2" \
      -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 365 -out "$pki/$1.crt" 2>/dev/null \
      -extfile <(printf 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=%s\n' "$3")
    rm -f "$pki/$1.csr"
  }
  _issue server etcd-server serverAuth,clientAuth
  _issue peer etcd-peer serverAuth,clientAuth
  _issue healthcheck-client kube-etcd-healthcheck-client clientAuth
  rm -f "$pki/ca.srl"
  chmod 0600 "$pki"/*.key
}

# etcd_flags NAME DATA_DIR PKI CLIENT_URL PEER_URL: the kubeadm-style etcd command line, one
# flag per line, as the static pod manifest lists them.
etcd_flags() {
  local name=$1 data=$2 pki=$3 client=$4 peer=$5
  printf '%s\n' \
    "--name=$name" "--data-dir=$data" \
    "--listen-client-urls=$client" "--advertise-client-urls=$client" \
    "--listen-peer-urls=$peer" "--initial-advertise-peer-urls=$peer" \
    "--initial-cluster=$name=$peer" \
    "--cert-file=$pki/server.crt" "--key-file=$pki/server.key" \
    "--trusted-ca-file=$pki/ca.crt" "--client-cert-auth=true" \
    "--peer-cert-file=$pki/peer.crt" "--peer-key-file=$pki/peer.key" \
    "--peer-trusted-ca-file=$pki/ca.crt" "--peer-client-cert-auth=true"
}

# kubeadm_etcd_manifest MINOR NAME CLIENT_PORT PEER_PORT METRICS_PORT: the etcd static pod
# manifest kubeadm writes for an etcd MINOR (3.5, 3.6, 3.7) image, on stdout, filled in from the
# one template the tests use too (tests/fixtures/kubeadm-etcd.yaml; its header says how).
kubeadm_etcd_manifest() {
  awk -v minor="$1" -v name="$2" -v client="$3" -v peer="$4" -v metrics="$5" '
    /^#/ { next }
    {
      line = $0
      at = index(line, " #@ ")
      if (at) {
        n = split(substr(line, at + 4), tags, " ")
        keep = 0
        for (t = 1; t <= n; t++) if (tags[t] == minor) keep = 1
        if (!keep) next
        line = substr(line, 1, at - 1)
      }
      gsub(/@NAME@/, name, line)
      gsub(/@CLIENT_PORT@/, client, line)
      gsub(/@PEER_PORT@/, peer, line)
      gsub(/@METRICS_PORT@/, metrics, line)
      gsub(/@INITIAL_CLUSTER@/, name "=https://127.0.0.1:" peer, line)
      print line
    }' "$here/tests/fixtures/kubeadm-etcd.yaml"
}

# ---- Real etcd binaries (scripts/install-test-deps puts them in the test cache) and their
# clients. Callers set $here (project dir).

# etcd_cache_dir: the dir holding one <version>/ subdir (etcd, etcdctl, etcdutl) per etcd
# version: $ETCDGUARD_ETCD_DIR, else the test cache's etcd/.
etcd_cache_dir() {
  printf '%s' "${ETCDGUARD_ETCD_DIR:-$here/.cache/etcd}"
}

# newest_etcd_dir MINOR: the newest cached <version>/ dir of etcd MINOR (e.g. 3.7). When there
# is none, ls says so on stderr and the status is ls's (non-zero), which stops a caller under
# `set -e` at `dir=$(newest_etcd_dir 3.7)`.
newest_etcd_dir() {
  ls -d "$(etcd_cache_dir)/$1".* | sort | tail -1
}

# etcdctl_tls ETCD_DIR PKI ENDPOINT ARG...: ETCD_DIR/etcdctl ARG... against ENDPOINT with
# client-certificate auth from a kubeadm-layout PKI dir (make_pki): ca and healthcheck-client.
etcdctl_tls() {
  local dir=$1 pki=$2 endpoint=$3
  shift 3
  "$dir/etcdctl" --endpoints="$endpoint" --cacert="$pki/ca.crt" \
    --cert="$pki/healthcheck-client.crt" --key="$pki/healthcheck-client.key" "$@"
}

# etcd_wait_healthy ETCD_DIR PKI ENDPOINT [TRIES]: polls `etcdctl endpoint health` every 0.2 s,
# TRIES times (default 150, 30 s); 0 once healthy, else says so on stderr and returns 1.
etcd_wait_healthy() {
  local dir=$1 pki=$2 endpoint=$3 tries=${4:-150}
  for _ in $(seq "$tries"); do
    etcdctl_tls "$dir" "$pki" "$endpoint" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd on $endpoint did not become healthy" >&2
  return 1
}

# etcd_start ETCD_DIR FLAGS_FILE LOG [FLAG...]: starts ETCD_DIR/etcd in the background with the
# flags of FLAGS_FILE (one a line, as etcd_flags writes them) then FLAG..., stdout and stderr
# to LOG. The caller's $! is its pid afterwards.
etcd_start() {
  local dir=$1 flags_file=$2 out=$3
  local -a flags
  shift 3
  mapfile -t flags < "$flags_file" || return
  "$dir/etcd" "${flags[@]}" "$@" > "$out" 2>&1 &
}

# ---- A real systemd in a container (systemd-nspawn), for scripts/systemd-test and
# scripts/package-test. Callers set $here (project dir) and start with ct_test_begin, which
# gives them ok and fail (the functions below call fail).

# ct_test_begin NAME TOOL...: starts the checks of test script NAME: the count of passed
# checks is 0, and every TOOL must be on PATH (else fail, pointing at install-test-deps).
ct_test_begin() {
  ct_test_name=$1
  shift
  passed=0
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || fail "$t is missing: run scripts/install-test-deps"
  done
}

# ok MSG: a passed check. fail MSG: a failed one; prints the summary and exits 1.
# ct_test_done: the summary of a run in which every check passed.
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { echo "FAILED: $*" >&2; echo "$ct_test_name: $passed passed, 1 failed"; exit 1; }
ct_test_done() { echo "$ct_test_name: $passed passed, 0 failed"; }

# A minimal Debian with systemd (and rpm, to install the .rpm), built once and cached
# (git-ignored). Prints its path.
ct_rootfs() {
  local cache="$here/.cache/rootfs-bookworm-rpm"
  if [ ! -x "$cache/usr/bin/systemctl" ] || [ ! -x "$cache/usr/bin/rpm" ]; then
    echo "debootstrap bookworm (once, cached in .cache/)" >&2
    rm -rf "$cache.tmp"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,rpm bookworm "$cache.tmp" \
      "$(debian_mirror)" > "$here/.cache/debootstrap.log" 2>&1 \
      || { tail -20 "$here/.cache/debootstrap.log" >&2; fail "debootstrap failed"; }
    mv "$cache.tmp" "$cache"
  fi
  printf '%s' "$cache"
}

# ct_kubeadm_node ROOT ETCD_DIR: kubeadm's PKI and etcd manifest at kubeadm's paths in ROOT, and
# a real etcd 3.7 as a plain unit on the container's loopback (standing in for the static pod).
ct_kubeadm_node() {
  local root=$1 etcd_dir=$2 flags
  flags=$(mktemp)
  make_pki "$root/etc/kubernetes/pki/etcd"
  install -m 0755 "$etcd_dir/etcd" "$root/usr/local/bin/etcd"
  install -d -m 0700 "$root/var/lib/etcd"
  install -d "$root/etc/kubernetes/manifests"
  etcd_flags cp1 /var/lib/etcd /etc/kubernetes/pki/etcd https://127.0.0.1:2379 \
    https://127.0.0.1:2380 > "$flags"
  kubeadm_etcd_manifest 3.7 cp1 2379 2380 2381 > "$root/etc/kubernetes/manifests/etcd.yaml"
  chmod 0600 "$root/etc/kubernetes/manifests/etcd.yaml"
  cat > "$root/etc/systemd/system/etcd.service" <<UNIT
[Unit]
Description=etcd (stands in for the kubeadm static pod)
[Service]
Type=notify
ExecStart=/usr/local/bin/etcd $(tr '\n' ' ' < "$flags")
[Install]
WantedBy=multi-user.target
UNIT
  ln -sf /etc/systemd/system/etcd.service "$root/etc/systemd/system/multi-user.target.wants/etcd.service"
  rm -f "$flags"
}

# ct_boot ROOT NAME LOG: boots the container; sets $ct_nspawn and $ct_leader.
ct_boot() {
  local root=$1 name=$2 log=$3 state=""
  systemd-nspawn -D "$root" --boot --register=no --keep-unit --private-network \
    --console=passive -M "$name" > "$log" 2>&1 &
  ct_nspawn=$!
  ct_leader=""
  for _ in $(seq 100); do
    ct_leader=$(pgrep -P "$ct_nspawn" -x systemd || true)
    [ -n "$ct_leader" ] && break
    sleep 0.1
  done
  [ -n "$ct_leader" ] || { cat "$log" >&2; fail "the container did not boot"; }
  for _ in $(seq 180); do
    state=$(in_ct systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded) break;; esac
    sleep 0.5
  done
  case "$state" in
    running|degraded) ;;
    *) tail -20 "$log" >&2; fail "system state '$state'";;
  esac
}

in_ct() { nsenter -t "$ct_leader" -a "$@"; }

# ct_workdir TAG [KEEP_NOTE]: a fresh $work (/var/tmp/etcdguard-TAG.XXXXXX) holding $root, a
# copy of the cached root file system (ct_rootfs), and an EXIT trap (ct_cleanup). Sets $work
# and $root.
ct_workdir() {
  local cache
  ct_keep_note=${2:-}
  cache=$(ct_rootfs) || return
  work=$(mktemp -d "/var/tmp/etcdguard-$1.XXXXXX") || return
  trap ct_cleanup EXIT
  root="$work/root"
  cp -a "$cache" "$root"
}

# ct_cleanup: the EXIT trap of ct_workdir: stops the container and removes $work, or with
# KEEP_CT=1 leaves both and prints (after KEEP_NOTE) how to enter, stop and remove them.
ct_cleanup() {
  if [ "${KEEP_CT:-0}" = 1 ]; then
    echo "KEEP_CT=1: ${ct_keep_note:+$ct_keep_note }nsenter -t $ct_leader -a bash; kill $ct_nspawn; rm -rf $work"
    return
  fi
  ct_stop
  rm -rf "$work"
}

# ct_stop: clean shutdown of the container, then SIGKILL if it hangs.
ct_stop() {
  if [ -n "${ct_nspawn:-}" ] && kill -0 "$ct_nspawn" 2>/dev/null; then
    kill -TERM "$ct_nspawn" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$ct_nspawn" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$ct_nspawn" 2>/dev/null || true
  fi
}

# ct_test_schedule ROOT: the drop-in that lets etcdguard.service in ROOT accept a seconds field
# in its schedule (tests only).
ct_test_schedule() {
  install -d "$1/etc/systemd/system/etcdguard.service.d"
  printf '[Service]\nEnvironment=ETCDGUARD_TEST_SECONDS_SCHEDULE=1\n' \
    > "$1/etc/systemd/system/etcdguard.service.d/test.conf"
}

# ct_wait_scheduled_backup: waits up to 20 s for `etcdguard records` to list a scheduled backup;
# else fails with the tail of etcdguard's journal.
ct_wait_scheduled_backup() {
  local n=0
  for _ in $(seq 40); do n=$(ct_scheduled_backups); [ "$n" -ge 1 ] && break; sleep 0.5; done
  [ "$n" -ge 1 ] || { in_ct journalctl -u etcdguard --no-pager | tail -20; fail "no scheduled backup"; }
}

# ct_scheduled_backups: successful scheduled backups `etcdguard records` lists in the container.
ct_scheduled_backups() {
  in_ct env ETCDGUARD_TEST_SECONDS_SCHEDULE=1 etcdguard records --output json | python3 -c '
import json, sys
print(sum(1 for r in json.load(sys.stdin) if r["trigger"] == "schedule" and r["result"] == "Success"))'
}

# ct_journal_has_backup_line: the journal holds the structured "backup finished" line.
ct_journal_has_backup_line() {
  in_ct journalctl -u etcdguard -o json --no-pager | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("MESSAGE") == "backup finished" and e.get("RESULT") == "Success" \
       and e.get("FILE", "").endswith(".db") and int(e.get("BYTES", 0)) > 0 \
       and e.get("REVISION") and e.get("DURATION_SECONDS") and e.get("ID"):
        print("journal fields:", {k: e[k] for k in ("ID", "FILE", "BYTES", "REVISION", "RESULT")})
        sys.exit(0)
sys.exit(1)'
}
