# Shared settings of the local control plane scripts (sourced, not run).
state_dir="${DTJ_TESTENV_DIR:-/tmp/dtj-testenv}"
etcd_data_dir="${DTJ_TESTENV_ETCD_DIR:-/dev/shm/dtj-testenv-etcd}"
etcd_port="${DTJ_TESTENV_ETCD_PORT:-12379}"
# The real node's pods (tools/node) reach the API server on the host's address; every client
# still authenticates with a certificate or a ServiceAccount token.
apiserver_bind_address="${DTJ_TESTENV_BIND_ADDRESS:-0.0.0.0}"
apiserver_port="${DTJ_TESTENV_APISERVER_PORT:-16443}"
controller_manager_port="${DTJ_TESTENV_CM_PORT:-20257}"
scheduler_port="${DTJ_TESTENV_SCHEDULER_PORT:-20259}"
kwok_port="${DTJ_TESTENV_KWOK_PORT:-20260}"
kubeconfig="$state_dir/kubeconfig"
components=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
