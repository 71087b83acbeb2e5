#!/usr/bin/env bash
# `make demo`: the whole product on this machine. A control plane of its own (state under
# $DTJ_DEMO_DIR, its own ports; the test suite's control plane is untouched), the local node
# agent, the operator, a synthetic dataset on a hostPath PV, and the 2-node tiny-cpu job watched
# to Succeeded. Everything started here is stopped on exit, by recorded PIDs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
demo_dir="${DTJ_DEMO_DIR:-/tmp/dtj-demo}"
timeout_s="${DTJ_DEMO_TIMEOUT_S:-900}"
job=tiny-cpu-local
export DTJ_TESTENV_DIR="$demo_dir/controlplane" DTJ_TESTENV_ETCD_DIR=/dev/shm/dtj-demo-etcd
export DTJ_TESTENV_ETCD_PORT=22379 DTJ_TESTENV_APISERVER_PORT=26443 DTJ_TESTENV_CM_PORT=30257
export DTJ_TESTENV_SCHEDULER_PORT=30259 DTJ_TESTENV_KWOK_PORT=30260
export DTJ_LOCALNODE_DIR="$demo_dir/localnode"
pv_dir="$demo_dir/pv" logs_dir="$demo_dir/logs" pids_dir="$demo_dir/pids"
kubeconfig="$DTJ_TESTENV_DIR/kubeconfig"

log() { echo "[demo $(date +%H:%M:%S)] $*"; }
kubectl() { "$bin_dir/kubectl" --kubeconfig="$kubeconfig" "$@"; }

stop_pid() {  # name: SIGTERM by recorded PID, wait, then SIGKILL
  local file="$pids_dir/$1.pid" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop_all() {
  stop_pid operator  # first, so it does not react to the node going away
  stop_pid localnode  # kills its pods' processes, removes its Node and bridge
  stop_pid synth
  tools/testenv/down.sh >/dev/null 2>&1 || true
}

wait_until() {  # what command...: retried for up to 60 s
  local what="$1" deadline=$(( $(date +%s) + 60 )); shift
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out waiting for $what"; return 1; fi
    sleep 1
  done
}

start_bg() {  # name command...: in its own session, PID recorded, log to $logs_dir/<name>.log
  local name="$1"; shift
  setsid "$@" >"$logs_dir/$name.log" 2>&1 </dev/null &
  echo $! >"$pids_dir/$name.pid"
}

mkdir -p "$logs_dir" "$pids_dir" "$pv_dir"
stop_all  # leftovers of an earlier demo
if [ "${1:-}" = down ]; then log "stopped"; exit 0; fi
trap 'stop_all; log "stopped everything"' EXIT
started=$(date +%s)
# A fresh run: earlier checkpoints would make the job resume instead of train.
rm -rf "$pv_dir/checkpoints" "$DTJ_LOCALNODE_DIR"

synth_done="$pv_dir/synthetic/encoders/fid-features/fid_features.json"  # absent before evaluation
if [ ! -f "$synth_done" ] || [ ! -f "$pv_dir/synthetic/latents/index.json" ]; then
  rm -rf "$pv_dir/synthetic"
  log "creating the synthetic dataset (background) in $pv_dir/synthetic"
  start_bg synth .venv/bin/dtj data synth --out "$pv_dir/synthetic" --num-samples 64
fi
log "starting a control plane of its own in $DTJ_TESTENV_DIR"
bin_dir="$(tools/testenv/build.sh etcd kube)"  # no kwok, helm or promtool: the demo needs none
DTJ_TESTENV_FAKE_NODES=0 tools/testenv/up.sh >"$logs_dir/controlplane.log" 2>&1
kubectl apply --server-side -f manifests/crd.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/diffusiontrainingjobs.diffusion.dev >/dev/null
sed "s|HOST_PATH|$pv_dir|" tools/localnode/storage.yaml | kubectl apply -f - >/dev/null

log "starting the local node agent (dtj-local) and the operator"
start_bg localnode env PYTHONPATH=tools .venv/bin/python -m localnode --kubeconfig "$kubeconfig" \
  --node-name dtj-local --state-dir "$DTJ_LOCALNODE_DIR"
start_bg operator env KUBECONFIG="$kubeconfig" DTJ_OPERATOR_NAMESPACES=default \
  DTJ_OPERATOR_METRICS_PORT=0 DTJ_OPERATOR_LIVENESS_PORT=28080 \
  DTJ_OPERATOR_PROGRESS_INTERVAL_S=2 .venv/bin/dtj operator
wait_until "node dtj-local Ready" kubectl wait --for=condition=Ready --timeout=5s node/dtj-local
wait_until "pvc Bound" kubectl wait --for=jsonpath='{.status.phase}'=Bound --timeout=5s \
  pvc/dtj-local-data
if [ -f "$pids_dir/synth.pid" ]; then
  while kill -0 "$(cat "$pids_dir/synth.pid")" 2>/dev/null; do sleep 1; done
  rm -f "$pids_dir/synth.pid"
  [ -f "$synth_done" ] || { cat "$logs_dir/synth.log"; exit 1; }
fi

log "kubectl apply -f manifests/examples/$job.yaml"
kubectl apply -f "manifests/examples/$job.yaml"
"$bin_dir/kubectl" --kubeconfig="$kubeconfig" get dtj -w &
watcher=$!  # the binary itself, not a function's subshell, so that kill reaches it
deadline=$(( $(date +%s) + timeout_s ))
phase=""
until [ "$phase" = Succeeded ] || [ "$phase" = Failed ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out after ${timeout_s}s"; break; fi
  sleep 2
  phase="$(kubectl get dtj "$job" -o jsonpath='{.status.phase}')"
done
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
kubectl get dtj "$job" -o wide
log "rank 0 loss (dtj logs $job --rank 0):"
.venv/bin/dtj logs "$job" --rank 0 | grep -o 'step=[0-9/]* loss=[0-9.]*' || true
checkpoints="$pv_dir/checkpoints/$job"
log "checkpoints:      $(ls -d "$checkpoints"/step-* 2>/dev/null | tr '\n' ' ')"
log "exported model:   $(ls -d "$checkpoints"/export/step-* 2>/dev/null | tr '\n' ' ')"
evaluation="$(kubectl get dtj "$job" -o jsonpath='{.status.eval}')"
log "evaluation:       ${evaluation:-none reported} (status.eval)"
log "sample grid:      $(ls "$checkpoints"/eval/step-*/grid.png 2>/dev/null | tail -1) (a row per guidance scale)"
log "training images:  $pv_dir/synthetic/raw"
log "logs:             dtj logs $job --rank 0|1 (state in $DTJ_LOCALNODE_DIR), $logs_dir/*.log"
log "finished in $(( $(date +%s) - started )) s with phase ${phase:-unknown}"
[ "$phase" = Succeeded ]
