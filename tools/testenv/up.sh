#!/usr/bin/env bash
# Start a real Kubernetes control plane on loopback: etcd (on /dev/shm), kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (fake nodes and pod lifecycles, our stages).
# Builds the binaries first if the cache lacks them. Prints the admin kubeconfig path on stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

log() { echo "[testenv $(date +%H:%M:%S)] $*" >&2; }

# DTJ_TESTENV_FAKE_NODES=0: no kwok (the demo runs its pods on a local node of its own).
fake_nodes="${DTJ_TESTENV_FAKE_NODES:-1}"
if [ "$fake_nodes" = 1 ]; then
  bin_dir="$("$here/build.sh" etcd kube kwok)"
else
  bin_dir="$("$here/build.sh" etcd kube)"
fi
mkdir -p "$state_dir"
exec 8>"$state_dir/up.lock"
flock 8

"$here/down.sh" >&2  # leftovers of an earlier run
rm -rf "$state_dir/pki" "$state_dir/logs" "$state_dir/pids"
mkdir -p "$state_dir/pki" "$state_dir/logs" "$state_dir/pids" "$etcd_data_dir"
pki="$state_dir/pki"

advertise_address() {
  # The API server refuses loopback; any address of this host that is not loopback will do.
  local ip
  ip="$(ip -4 -o addr show scope global 2>/dev/null | awk '{sub(/\/.*/, "", $4); print $4; exit}')"
  echo "${ip:-${DTJ_TESTENV_ADVERTISE_ADDRESS:?no non-loopback IPv4 address; set DTJ_TESTENV_ADVERTISE_ADDRESS}}"
}

issue_cert() {  # name subject extensions
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$1.key" -out "$pki/$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -out "$pki/$1.crt" -extfile <(printf '%b' "$3") 2>/dev/null
}

generate_pki() {
  local ip="$1"
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" \
    -days 30 -subj "/CN=dtj-testenv-ca" 2>/dev/null
  local sans="IP:127.0.0.1,IP:10.96.0.1,IP:$ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
  sans+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_cert apiserver "/CN=kube-apiserver" "subjectAltName=$sans\nextendedKeyUsage=serverAuth"
  issue_cert admin "/O=system:masters/CN=dtj-testenv-admin" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

write_kubeconfig() {
  local kc="$kubeconfig.tmp" kubectl="$bin_dir/kubectl"
  rm -f "$kc"
  "$kubectl" config --kubeconfig="$kc" set-cluster testenv --server="https://127.0.0.1:$apiserver_port" \
    --certificate-authority="$pki/ca.crt" --embed-certs=true >/dev/null
  "$kubectl" config --kubeconfig="$kc" set-credentials admin --client-certificate="$pki/admin.crt" \
    --client-key="$pki/admin.key" --embed-certs=true >/dev/null
  "$kubectl" config --kubeconfig="$kc" set-context testenv --cluster=testenv --user=admin >/dev/null
  "$kubectl" config --kubeconfig="$kc" use-context testenv >/dev/null
  mv "$kc" "$kubeconfig"
}

start() {  # name args...
  local name="$1"; shift
  # 8>&-: the long-lived processes must not inherit (and so hold) the up.lock.
  setsid "$bin_dir/$name" "$@" >"$state_dir/logs/$name.log" 2>&1 </dev/null 8>&- &
  echo $! >"$state_dir/pids/$name.pid"
  log "started $name (pid $!)"
}

wait_for() {  # description timeout_s command...
  local what="$1" timeout_s="$2"; shift 2
  local deadline=$(( $(date +%s) + timeout_s ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out waiting for $what; logs in $state_dir/logs"
      return 1
    fi
    sleep 0.3
  done
}

kubectl_admin() { "$bin_dir/kubectl" --kubeconfig="$kubeconfig" "$@"; }

kwok_logs_crd() {  # from the kwok module the binary was built from
  # shellcheck source=versions.env
  source "$here/versions.env"
  local dir
  dir="$(GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  echo "$dir/kustomize/crd/bases/kwok.x-k8s.io_logs.yaml"
}

ip="$(advertise_address)"
generate_pki "$ip"
write_kubeconfig

start etcd --name=testenv --data-dir="$etcd_data_dir" --unsafe-no-fsync \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$((etcd_port + 1))" \
  --initial-advertise-peer-urls="http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster="testenv=http://127.0.0.1:$((etcd_port + 1))" --log-level=warn
wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

start kube-apiserver --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address="$apiserver_bind_address" --secure-port="$apiserver_port" --advertise-address="$ip" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --authorization-mode=RBAC \
  --kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true --profiling=false \
  --event-ttl=30m
wait_for kube-apiserver 90 kubectl_admin get --raw /readyz

common=(--kubeconfig="$kubeconfig"
  --leader-elect=false --bind-address=127.0.0.1)
start kube-controller-manager "${common[@]}" --secure-port="$controller_manager_port" \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --use-service-account-credentials=true --node-monitor-grace-period=40s
start kube-scheduler "${common[@]}" --secure-port="$scheduler_port"

if [ "$fake_nodes" = 1 ]; then
  for stages in "$here"/stages/*.yaml; do printf -- '---\n'; cat "$stages"; done >"$state_dir/kwok-stages.yaml"
  # Pod logs on fake nodes: a test writes a CRI-format log file and a kwok Logs object naming
  # it; the API server reaches kwok's kubelet API (TLS, the node's InternalIP and port).
  kubectl_admin apply --server-side -f "$(kwok_logs_crd)" >/dev/null
  start kwok --kubeconfig="$kubeconfig" --config="$state_dir/kwok-stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr=10.244.0.0/16 --node-ip=127.0.0.1 --node-lease-duration-seconds=40 \
    --server-address="127.0.0.1:$kwok_port" --node-port="$kwok_port" --enable-crds=Logs \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key"
fi

wait_for kube-controller-manager 60 curl -fsSk "https://127.0.0.1:$controller_manager_port/healthz"
wait_for kube-scheduler 60 curl -fsSk "https://127.0.0.1:$scheduler_port/healthz"
wait_for "serviceaccount default/default" 60 kubectl_admin -n default get serviceaccount default
log "control plane ready; kubectl: $bin_dir/kubectl"
echo "$kubeconfig"
