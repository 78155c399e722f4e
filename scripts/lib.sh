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

# etcd_manifest FLAGS_FILE: a kubeadm-style etcd static pod manifest on stdout.
etcd_manifest() {
  echo "apiVersion: v1"
  echo "kind: Pod"
  echo "metadata: {name: etcd, namespace: kube-system, labels: {component: etcd, tier: control-plane}}"
  echo "spec:"
  echo "  containers:"
  echo "  - name: etcd"
  echo "    command:"
  echo "    - etcd"
  sed 's/^/    - /' "$1"
}

# ---- A real systemd in a container (systemd-nspawn), for scripts/systemd-test and
# scripts/package-test. Callers set $here (project dir) and define fail().

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
  etcd_manifest "$flags" > "$root/etc/kubernetes/manifests/etcd.yaml"
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

# ct_stop: clean shutdown of the container, then SIGKILL if it hangs.
ct_stop() {
  if [ -n "${ct_nspawn:-}" ] && kill -0 "$ct_nspawn" 2>/dev/null; then
    kill -TERM "$ct_nspawn" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$ct_nspawn" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$ct_nspawn" 2>/dev/null || true
  fi
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
