# Shared settings of the real node scripts (sourced, not run).
node_dir="${DTJ_NODE_DIR:-/tmp/dtj-node}"
node_name="${DTJ_NODE_NAME:-dtj-node}"
# Images survive the node: containerd's content store lives in the cache, one node at a time.
node_cache="${DTJ_NODE_CACHE:-$HOME/.cache/dtj-node}"
containerd_root="$node_cache/containerd"
imported_dir="$node_cache/imported"
pod_cidr="${DTJ_NODE_POD_CIDR:-10.89.0.0/24}"
bridge_name="${DTJ_NODE_BRIDGE:-dtj-cni0}"
kubelet_port="${DTJ_NODE_KUBELET_PORT:-10250}"
containerd_socket="$node_dir/containerd.sock"
kubelet_root="$node_dir/kubelet"
# The kubernetes Service's address, routed to the API server the way kube-proxy would.
service_ip="${DTJ_NODE_SERVICE_IP:-10.96.0.1}"
nat_comment="dtj-node:$node_name"
