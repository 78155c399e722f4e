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
