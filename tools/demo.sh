#!/usr/bin/env bash
# `make demo`: the whole product on this machine, as a cluster runs it. A control plane of its own
# (state under $DTJ_DEMO_DIR, its own ports; the test suite's is untouched), a real node (a kubelet
# with containerd, runc and CNI networking: tools/node) running the images built here, the
# operator installed with `helm install` as a pod, a synthetic dataset on a hostPath PV, and the
# tiny-cpu-local job watched to Succeeded. Everything started here is stopped on exit.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
demo_dir="${DTJ_DEMO_DIR:-/tmp/dtj-demo}"
timeout_s="${DTJ_DEMO_TIMEOUT_S:-900}"
job=tiny-cpu-local namespace=diffusion-operator
export DTJ_TESTENV_DIR="$demo_dir/controlplane" DTJ_TESTENV_ETCD_DIR=/dev/shm/dtj-demo-etcd
export DTJ_TESTENV_ETCD_PORT=22379 DTJ_TESTENV_APISERVER_PORT=26443 DTJ_TESTENV_CM_PORT=30257
export DTJ_TESTENV_SCHEDULER_PORT=30259 DTJ_TESTENV_KWOK_PORT=30260 DTJ_TESTENV_FAKE_NODES=0
export DTJ_NODE_DIR="$demo_dir/node" DTJ_NODE_NAME=dtj-demo-node
pv_dir="$demo_dir/pv" logs_dir="$demo_dir/logs"
kubeconfig="$DTJ_TESTENV_DIR/kubeconfig"
repository=localhost/diffusion-operator tag=dev

log() { echo "[demo $(date +%H:%M:%S)] $*"; }
kubectl() { "$bin_dir/kubectl" --kubeconfig="$kubeconfig" "$@"; }

stop_all() {
  [ -z "${background_pids[synth]:-}" ] || kill "${background_pids[synth]}" 2>/dev/null || true
  tools/node/down.sh >/dev/null 2>&1 || true  # its containers, the kubelet, containerd, network
  tools/testenv/down.sh >/dev/null 2>&1 || true
}

declare -A background_pids
start_bg() {  # name command...: a child of this shell, log in $logs_dir/<name>.log
  local name="$1"; shift
  "$@" >"$logs_dir/$name.log" 2>&1 </dev/null &
  background_pids[$name]=$!
}

wait_bg() {  # name: wait for it; on failure show its log and stop
  local pid="${background_pids[$1]}"
  unset "background_pids[$1]"
  wait "$pid" || { tail -30 "$logs_dir/$1.log"; log "$1 failed (log: $logs_dir/$1.log)"; exit 1; }
}

mkdir -p "$logs_dir" "$pv_dir"
stop_all  # leftovers of an earlier demo
if [ "${1:-}" = down ]; then log "stopped"; exit 0; fi
trap 'stop_all; log "stopped everything"' EXIT
started=$(date +%s)
# A fresh run: earlier checkpoints would make the job resume instead of train.
rm -rf "$pv_dir/checkpoints"

synth_done="$pv_dir/synthetic/encoders/fid-features/fid_features.json"  # absent before evaluation
if [ ! -f "$synth_done" ] || [ ! -f "$pv_dir/synthetic/latents/index.json" ]; then
  rm -rf "$pv_dir/synthetic"
  log "creating the synthetic dataset (background) in $pv_dir/synthetic"
  start_bg synth .venv/bin/dtj data synth --out "$pv_dir/synthetic" --num-samples 64
fi
log "building the control plane, kubelet and helm (cached after the first run; log: $logs_dir)"
start_bg binaries tools/testenv/build.sh etcd kube kubelet helm
log "building the operator and trainer images (tools/images/build.sh)"
start_bg images tools/images/build.sh
wait_bg binaries
bin_dir="$(tail -1 "$logs_dir/binaries.log")"
wait_bg images
grep " built in " "$logs_dir/images.log" | sed 's/^/    /'

log "starting a control plane of its own in $DTJ_TESTENV_DIR"
tools/testenv/up.sh >"$logs_dir/controlplane.log" 2>&1
log "starting the real node $DTJ_NODE_NAME (containerd, runc, CNI bridge, kubelet)"
tools/node/up.sh "$kubeconfig" "$repository/operator:$tag" "$repository/trainer:$tag" \
  >"$logs_dir/node.log" 2>&1 || { tail -20 "$logs_dir/node.log"; exit 1; }
kubectl label node "$DTJ_NODE_NAME" diffusion.dev/local-node=true >/dev/null

log "helm install diffusion-operator helm/diffusion-operator -n $namespace"
"$bin_dir/helm" --kubeconfig="$kubeconfig" install diffusion-operator helm/diffusion-operator \
  -n "$namespace" --create-namespace --set image.repository="$repository/operator" \
  --set image.tag="$tag" --set replicaCount=1 --set operator.progressIntervalSeconds=2 \
  --wait --timeout 180s >"$logs_dir/helm.log"
# The job's data volume: the host's $pv_dir, where the workers' uid 1000 writes checkpoints.
chmod 0777 "$pv_dir"
sed -e "s|HOST_PATH|$pv_dir|" -e "s|namespace: default|namespace: $namespace|" \
  tools/node/demo-storage.yaml | kubectl apply -f - >/dev/null
[ -z "${background_pids[synth]:-}" ] || wait_bg synth
# Written by root here, read by uid 1000 there (safetensors files are created 0600).
chmod -R a+rX "$pv_dir/synthetic"

log "kubectl apply -n $namespace -f manifests/examples/$job.yaml (image: the trainer built here)"
sed "s|image: .*|image: $repository/trainer:$tag|" "manifests/examples/$job.yaml" |
  kubectl apply -n "$namespace" -f -
"$bin_dir/kubectl" --kubeconfig="$kubeconfig" get dtj -n "$namespace" -w &
watcher=$!  # the binary itself, not a function's subshell, so that kill reaches it
deadline=$(( $(date +%s) + timeout_s ))
phase=""
until [ "$phase" = Succeeded ] || [ "$phase" = Failed ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out after ${timeout_s}s"; break; fi
  sleep 2
  phase="$(kubectl get dtj "$job" -n "$namespace" -o jsonpath='{.status.phase}')"
done
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true

log "what ran where (kubectl get pods -o wide):"
kubectl get pods -n "$namespace" -o wide
log "the node: $(kubectl get node "$DTJ_NODE_NAME" -o jsonpath='kubelet {.status.nodeInfo.kubeletVersion}, {.status.nodeInfo.containerRuntimeVersion}')"
log "rank 0 loss (kubectl logs -l diffusion.dev/job-name=$job):"
kubectl logs -n "$namespace" -l "diffusion.dev/job-name=$job" --tail=-1 |
  grep -o 'step=[0-9/]* loss=[0-9.]*' || true
checkpoints="$pv_dir/checkpoints/$job"
log "checkpoints:      $(ls -d "$checkpoints"/step-* 2>/dev/null | tr '\n' ' ')"
log "exported model:   $(ls -d "$checkpoints"/export/step-* 2>/dev/null | tr '\n' ' ')"
evaluation="$(kubectl get dtj "$job" -n "$namespace" -o jsonpath='{.status.eval}')"
log "evaluation:       ${evaluation:-none reported} (status.eval)"
log "sample grid:      $(ls "$checkpoints"/eval/step-*/grid.png 2>/dev/null | tail -1) (a row per guidance scale)"
log "training images:  $pv_dir/synthetic/raw"
log "logs:             $logs_dir/*.log, the node's in $DTJ_NODE_DIR/logs (until the demo stops)"
log "finished in $(( $(date +%s) - started )) s with phase ${phase:-unknown}"
[ "$phase" = Succeeded ]
