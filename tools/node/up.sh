#!/usr/bin/env bash
# A real node for the local control plane: containerd (runc, CNI bridge networking, a pause image
# built here) and a kubelet built from the control plane's Kubernetes version, registered as
# $DTJ_NODE_NAME. Images are imported from the project's podman store (tools/images).
#   tools/node/up.sh KUBECONFIG [IMAGE[=ALIAS]...]
# An ALIAS names the image on the node as well (the release name a job's spec.image asks for).
# The API server must listen on the host's address (testenv: DTJ_TESTENV_BIND_ADDRESS=0.0.0.0).
# Stop it with tools/node/down.sh (same DTJ_NODE_* settings).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
kubeconfig="$(realpath "${1:?usage: up.sh KUBECONFIG [IMAGE[=ALIAS]...]}")"
shift
images=("$@")

log() { echo "[node $(date +%H:%M:%S)] $*" >&2; }
ctr_() { ctr --address "$containerd_socket" -n k8s.io "$@"; }

host_address() {
  ip -4 -o addr show scope global | awk -v bridge="$bridge_name" \
    '$2 != bridge && $2 !~ /^(cni|podman|veth)/ {sub(/\/.*/, "", $4); print $4; exit}'
}

start_bg() {  # name command...: own session, PID recorded, log in $node_dir/logs
  local name="$1"; shift
  setsid "$@" >"$node_dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$node_dir/pids/$name.pid"
}

wait_for() {  # what timeout_s command...
  local what="$1" deadline=$(( $(date +%s) + $2 )); shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out waiting for $what; logs in $node_dir/logs"; return 1
    fi
    sleep 0.5
  done
}

write_containerd_config() {  # pause_image
  cat >"$node_dir/containerd.toml" <<EOF
version = 2
root = "$containerd_root"
state = "$node_dir/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$containerd_socket"
[ttrpc]
  address = "$containerd_socket.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$1"
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this host's root may lack.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni"
EOF
}

write_cni_config() {
  mkdir -p "$node_dir/cni"
  cat >"$node_dir/cni/10-dtj-node.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "dtj-node", "plugins": [
  {"type": "bridge", "bridge": "$bridge_name", "isGateway": true, "ipMasq": true,
   "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$node_dir/cni-ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
}

write_kubelet_config() {  # address ca_file
  cat >"$node_dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$containerd_socket
address: $1
port: $kubelet_port
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $2}
authorization: {mode: Webhook}
# This host: cgroup v1 (hybrid), no systemd, no CAP_SYS_RESOURCE, swap allowed.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
failSwapOn: false
# A shared development disk: never evict or collect images over its fill level.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%,
  nodefs.inodesFree: 1%, imagefs.inodesFree: 1%}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
podCIDR: $pod_cidr
maxPods: 30
serializeImagePulls: false
EOF
}

import_image() {  # image[=alias]: from podman's store, once per image ID
  local alias=""
  if [[ "$1" == *=* ]]; then alias="${1#*=}"; set -- "${1%%=*}"; fi
  local id marker
  id="$("$root/tools/images/podman.sh" image inspect --format '{{.Id}}' "$1")"
  marker="$imported_dir/$(echo "$1" | tr '/:' '__')"
  if ! { [ -f "$marker" ] && [ "$(cat "$marker")" = "$id" ] && ctr_ images check "name==$1" \
    2>/dev/null | grep -q complete; }; then
    log "importing $1 into the node's containerd"
    # The previous build's layers go first (garbage collected once unnamed): gigabytes each. The
    # CRI plugin names every image by its ID as well.
    local previous=""
    [ ! -f "$marker" ] || previous="sha256:$(cat "$marker")"
    ctr_ images rm --sync "$1" ${alias:+"$alias"} ${previous:+"$previous"} >/dev/null 2>&1 || true
    "$root/tools/images/podman.sh" save --format docker-archive "$1" | ctr_ images import - >/dev/null
    mkdir -p "$imported_dir"
    echo "$id" >"$marker"
  fi
  [ -z "$alias" ] || ctr_ images tag --force "$1" "$alias" >/dev/null
}

route_service_ip() {  # apiserver_host:port
  iptables -t nat -A PREROUTING -d "$service_ip/32" -p tcp --dport 443 \
    -m comment --comment "$nat_comment" -j DNAT --to-destination "$1"
}

apiserver_endpoint() {  # what the kubernetes Service points at
  "$kubectl" --kubeconfig="$kubeconfig" get endpointslice -n default kubernetes \
    -o jsonpath='{.endpoints[0].addresses[0]}:{.ports[0].port}'
}

"$here/down.sh"  # leftovers of an earlier run
bin_dir="$("$root/tools/testenv/build.sh" kubelet kube)"
kubectl="$bin_dir/kubectl"
pause_image="$("$root/tools/images/pause.sh")"
mkdir -p "$node_dir/logs" "$node_dir/pids" "$containerd_root" "$node_cache"
exec 9>"$node_cache/node.lock"
flock -n 9 || { log "another real node uses $containerd_root; stop it with tools/node/down.sh"; exit 1; }
address="$(host_address)"
echo "$kubeconfig" >"$node_dir/kubeconfig-path"  # down.sh deletes the Node through it
ca_file="$node_dir/ca.crt"
"$kubectl" --kubeconfig="$kubeconfig" config view --raw --minify \
  -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$ca_file"

write_containerd_config "$pause_image"
write_cni_config
start_bg containerd containerd --config "$node_dir/containerd.toml"
wait_for containerd 30 ctr_ version
for image in "$pause_image" "${images[@]}"; do import_image "$image"; done

route_service_ip "$(apiserver_endpoint)"
write_kubelet_config "$address" "$ca_file"
start_bg kubelet "$bin_dir/kubelet" --config="$node_dir/kubelet.yaml" --kubeconfig="$kubeconfig" \
  --root-dir="$kubelet_root" --hostname-override="$node_name" --node-ip="$address" \
  --node-labels="diffusion.dev/real-node=true"
wait_for "node $node_name Ready" 90 "$kubectl" --kubeconfig="$kubeconfig" wait \
  --for=condition=Ready --timeout=2s "node/$node_name"
log "node $node_name Ready ($address, pods in $pod_cidr)"
