#!/usr/bin/env bash
# Stop the real node: its pods' containers, the kubelet, containerd, the Service route and the
# CNI bridge; unmount what the kubelet mounted. Only processes whose PIDs up.sh recorded.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"

stop_pid() {  # name
  local file="$node_dir/pids/$1.pid" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$1"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

remove_pods() {  # every task and container of the node's namespace, while containerd still runs
  [ -S "$containerd_socket" ] || return 0
  local ctr=(ctr --address "$containerd_socket" -n k8s.io) id
  for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
    "${ctr[@]}" tasks kill --signal SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 1
  for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
    "${ctr[@]}" tasks delete --force "$id" >/dev/null 2>&1 || true
  done
  for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
    "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
  done
}

remove_network() {
  local rule
  while rule="$(iptables -t nat -S PREROUTING 2>/dev/null | grep -F -- "\"$nat_comment\"" | head -1)" \
    && [ -n "$rule" ]; do
    eval "iptables -t nat ${rule/-A/-D}"
  done
  ip link delete "$bridge_name" 2>/dev/null || true
  # Network namespaces the CNI left behind (pods killed above never got a CNI DEL).
  for netns in /var/run/netns/cni-*; do
    [ -e "$netns" ] && ip netns delete "$(basename "$netns")" 2>/dev/null || true
  done
}

delete_node() {  # so that no pod is ever scheduled onto it again
  local kubeconfig kubectl
  [ -f "$node_dir/kubeconfig-path" ] || return 0
  kubeconfig="$(cat "$node_dir/kubeconfig-path")"
  kubectl="$("$here/../testenv/build.sh" kube)/kubectl"
  "$kubectl" --kubeconfig="$kubeconfig" delete node "$node_name" --ignore-not-found \
    --timeout=20s >/dev/null 2>&1 || true
}

stop_pid kubelet
delete_node
remove_pods
stop_pid containerd
remove_network
# The kubelet's volumes (tmpfs, bind mounts) and containerd's shm mounts, deepest first.
for dir in "$node_dir" "$containerd_root"; do
  awk -v prefix="$dir/" 'index($2, prefix) == 1 {print $2}' /proc/mounts | sort -r |
    while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
done
rm -rf "$node_dir"
