"""Fake GPU node pools: kwok-managed Nodes shaped like real A100/H100 pools.

The real scheduler bin-packs pods that request `nvidia.com/gpu` onto them, and leaves the rest
Pending with a real FailedScheduling event. Usable from tests and by hand:

    python tools/testenv/gpu_pool.py create --pool a100 --nodes 2 --shape a100
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from kubernetes import client, config

POOL_LABEL = "testenv.diffusion.dev/pool"
KWOK_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
NOT_READY_ANNOTATION = "testenv.diffusion.dev/node-ready"


@dataclass(frozen=True)
class GpuShape:
    product: str
    memory_mib: int
    instance_type: str
    cpu: str
    memory: str


SHAPES = {
    "a100": GpuShape("NVIDIA-A100-SXM4-80GB", 81920, "p4de.24xlarge", "96", "1152Gi"),
    "h100": GpuShape("NVIDIA-H100-80GB-HBM3", 81559, "p5.48xlarge", "192", "2048Gi"),
}


@dataclass(frozen=True)
class GpuPool:
    name: str
    node_names: list[str]
    shape: GpuShape

    @property
    def node_selector(self) -> dict[str, str]:
        return {POOL_LABEL: self.name}

    @property
    def tolerations(self) -> list[dict[str, str]]:
        return [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def build_gpu_node(name: str, pool: str, shape: GpuShape, num_gpus: int = 8) -> dict:
    capacity = {
        "cpu": shape.cpu,
        "memory": shape.memory,
        "pods": "110",
        "ephemeral-storage": "2Ti",
        "nvidia.com/gpu": str(num_gpus),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": dict(KWOK_ANNOTATION),
            "labels": {
                POOL_LABEL: pool,
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": shape.instance_type,
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": shape.product,
                "nvidia.com/gpu.count": str(num_gpus),
                "nvidia.com/gpu.memory": str(shape.memory_mib),
            },
        },
        "spec": {"taints": [dict(GPU_TAINT)]},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def create_gpu_pool(
    core: client.CoreV1Api, pool: str, num_nodes: int, shape_name: str = "a100"
) -> GpuPool:
    shape = SHAPES[shape_name]
    names = [f"{pool}-{index}" for index in range(num_nodes)]
    for name in names:
        core.create_node(build_gpu_node(name, pool, shape))
    return GpuPool(name=pool, node_names=names, shape=shape)


def delete_gpu_pool(core: client.CoreV1Api, pool: str) -> None:
    for node in core.list_node(label_selector=f"{POOL_LABEL}={pool}").items:
        core.delete_node(node.metadata.name)


def set_node_ready(core: client.CoreV1Api, name: str, ready: bool, reason: str = "") -> None:
    """Make a fake node NotReady (kwok stage) or Ready again."""
    annotations: dict[str, str | None] = {NOT_READY_ANNOTATION: None if ready else "false"}
    if reason:
        annotations["testenv.diffusion.dev/node-reason"] = reason
    core.patch_node(name, {"metadata": {"annotations": annotations}})


def node_ready_status(core: client.CoreV1Api, name: str) -> str | None:
    node = core.read_node(name)
    for condition in node.status.conditions or []:
        if condition.type == "Ready":
            return str(condition.status)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="defaults to $KUBECONFIG")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a pool of fake GPU nodes")
    create.add_argument("--pool", required=True)
    create.add_argument("--nodes", type=int, default=1)
    create.add_argument("--shape", choices=sorted(SHAPES), default="a100")
    delete = sub.add_parser("delete", help="delete a pool's nodes")
    delete.add_argument("--pool", required=True)
    args = parser.parse_args(argv)
    config.load_kube_config(config_file=args.kubeconfig)
    core = client.CoreV1Api()
    if args.command == "create":
        pool = create_gpu_pool(core, args.pool, args.nodes, args.shape)
        print("\n".join(pool.node_names))
    else:
        delete_gpu_pool(core, args.pool)
    return 0


if __name__ == "__main__":
    sys.exit(main())
