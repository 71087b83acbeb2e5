"""Per-pod network namespaces on a host bridge, and /etc/hosts files for headless Services.

Each pod gets netns `<prefix>-<uid8>` with eth0 (a veth whose host end joins the bridge) and its
own IP. `ip netns exec` bind-mounts /etc/netns/<netns>/hosts over /etc/hosts, so rewriting that
file in place (same inode) makes new peers resolvable inside running pods.
"""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")


def ip_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class PodNetwork:
    netns: str
    veth: str
    ip: str


@dataclass(frozen=True)
class HostsEntry:
    ip: str
    hostname: str
    subdomain: str
    namespace: str

    def names(self) -> list[str]:
        if not self.subdomain:
            return [self.hostname]
        service = f"{self.hostname}.{self.subdomain}.{self.namespace}"
        return [f"{service}.svc.cluster.local", f"{service}.svc", service, self.hostname]


class Bridge:
    """The host bridge (gateway = first address of the subnet) and the pods' address pool."""

    def __init__(self, name: str, subnet: str, netns_prefix: str) -> None:
        self.name = name
        self.network = ipaddress.ip_network(subnet)
        hosts = list(self.network.hosts())
        self.gateway = str(hosts[0])
        self.free = [str(ip) for ip in hosts[1:]]
        self.netns_prefix = netns_prefix
        self.lock = threading.Lock()

    def create(self) -> None:
        if ip_cmd("link", "show", self.name, check=False).returncode != 0:
            ip_cmd("link", "add", self.name, "type", "bridge")
        ip_cmd("addr", "replace", f"{self.gateway}/{self.network.prefixlen}", "dev", self.name)
        ip_cmd("link", "set", self.name, "up")

    def delete(self) -> None:
        ip_cmd("link", "del", self.name, check=False)

    def attach(self, pod_uid: str) -> PodNetwork:
        """A new netns with eth0 on the bridge, loopback up and a default route."""
        with self.lock:
            address = self.free.pop(0)
        short = pod_uid.replace("-", "")[:10]
        net = PodNetwork(netns=f"{self.netns_prefix}-{short}", veth=f"vd{short}", ip=address)
        try:
            self.configure(net)
        except Exception:
            self.detach(net)  # never leave half a pod network behind
            raise
        return net

    def configure(self, net: PodNetwork) -> None:
        write_hosts(net.netns, [])
        write_resolv_conf(net.netns)
        ip_cmd("netns", "add", net.netns)
        ip_cmd("link", "add", net.veth, "type", "veth", "peer", "name", "eth0", "netns", net.netns)
        ip_cmd("link", "set", net.veth, "master", self.name, "up")
        ns = ("-n", net.netns)
        ip_cmd(*ns, "addr", "add", f"{net.ip}/{self.network.prefixlen}", "dev", "eth0")
        ip_cmd(*ns, "link", "set", "eth0", "up")
        ip_cmd(*ns, "link", "set", "lo", "up")
        ip_cmd(*ns, "route", "add", "default", "via", self.gateway)

    def detach(self, net: PodNetwork) -> None:
        ip_cmd("link", "del", net.veth, check=False)
        ip_cmd("netns", "del", net.netns, check=False)
        hosts_dir = NETNS_ETC / net.netns
        (hosts_dir / "hosts").unlink(missing_ok=True)
        (hosts_dir / "resolv.conf").unlink(missing_ok=True)
        if hosts_dir.is_dir():
            hosts_dir.rmdir()
        with self.lock:
            self.free.insert(0, net.ip)


def netns_pids(netns: str) -> list[int]:
    """Every process inside the pod's network namespace (the pod, whatever its sessions)."""
    if not (NETNS_RUN / netns).exists():
        return []
    result = ip_cmd("netns", "pids", netns, check=False)
    return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


def render_hosts(own: HostsEntry | None, peers: list[HostsEntry]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for entry in ([own] if own else []) + [p for p in peers if p != own]:
        lines.append(f"{entry.ip}\t{' '.join(entry.names())}")
    return "\n".join(lines) + "\n"


def write_resolv_conf(netns: str) -> None:
    """No DNS server is reachable from a pod: fail lookups at once instead of timing out."""
    path = NETNS_ETC / netns / "resolv.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")


def write_hosts(netns: str, entries: list[HostsEntry], own: HostsEntry | None = None) -> None:
    """Rewrite in place: the running pod sees the bind-mounted inode, not the path."""
    path = NETNS_ETC / netns / "hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_hosts(own, entries).encode()
    with path.open("ab+") as handle:
        handle.seek(0)
        handle.truncate()
        handle.write(text)
