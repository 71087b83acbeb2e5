"""Materialise a pod's volumes on the host and list the mounts its container needs."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ObjectReader = Callable[[str, str, str], Mapping[str, Any]]  # (kind, namespace, name) -> object
_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_FACTORS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class VolumeError(Exception):
    """A volume cannot be provided yet (missing ConfigMap, unbound claim, unsupported kind)."""


@dataclass(frozen=True)
class Mount:
    target: str
    source: str = ""  # empty for tmpfs
    tmpfs_bytes: int | None = None
    read_only: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantity_bytes(quantity: str | None) -> int | None:
    if not quantity:
        return None
    match = _QUANTITY.match(quantity)
    if match is None:
        raise VolumeError(f"unsupported quantity {quantity!r}")
    return int(match.group(1)) * _FACTORS[match.group(2)]


def write_config_map(config_map: Mapping[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for key, text in (config_map.get("data") or {}).items():
        (directory / key).write_text(text)
    for key, blob in (config_map.get("binaryData") or {}).items():
        (directory / key).write_bytes(base64.b64decode(blob))


def claim_host_path(namespace: str, claim_name: str, read_object: ObjectReader) -> str:
    """PVC -> bound PV -> its hostPath or local path."""
    claim = read_object("PersistentVolumeClaim", namespace, claim_name)
    volume_name = (claim.get("spec") or {}).get("volumeName")
    if not volume_name or (claim.get("status") or {}).get("phase") != "Bound":
        raise VolumeError(f"persistentvolumeclaim {claim_name!r} is not bound")
    volume_spec = read_object("PersistentVolume", "", volume_name).get("spec") or {}
    source = volume_spec.get("hostPath") or volume_spec.get("local")
    if not source:
        raise VolumeError(f"persistentvolume {volume_name!r} is neither hostPath nor local")
    return str(source["path"])


def volume_source(
    volume: Mapping[str, Any], namespace: str, volumes_dir: Path, read_object: ObjectReader
) -> tuple[str, int | None]:
    """(host source path, tmpfs size) of one pod volume; tmpfs volumes have no source."""
    name = volume["name"]
    if "configMap" in volume:
        config_map = read_object("ConfigMap", namespace, volume["configMap"]["name"])
        write_config_map(config_map, volumes_dir / name)
        return str(volumes_dir / name), None
    if "emptyDir" in volume:
        empty_dir = volume["emptyDir"] or {}
        if empty_dir.get("medium") == "Memory":
            return "", quantity_bytes(empty_dir.get("sizeLimit")) or 64 * 2**20
        (volumes_dir / name).mkdir(parents=True, exist_ok=True)
        return str(volumes_dir / name), None
    if "persistentVolumeClaim" in volume:
        claim_name = volume["persistentVolumeClaim"]["claimName"]
        return claim_host_path(namespace, claim_name, read_object), None
    if "hostPath" in volume:
        return str(volume["hostPath"]["path"]), None
    raise VolumeError(f"volume {name!r}: unsupported kind {sorted(set(volume) - {'name'})}")


def materialise_volumes(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    volumes_dir: Path,
    read_object: ObjectReader,
) -> list[Mount]:
    """Mounts for the container, parents before children (so /data before /data/x)."""
    namespace = pod["metadata"]["namespace"]
    volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        if "projected" in volume:
            continue  # the ServiceAccount token: local pods get no API credentials
        source, tmpfs_bytes = volume_source(volume, namespace, volumes_dir, read_object)
        if source and mount.get("subPath"):
            source = str(Path(source) / mount["subPath"])
        read_only = bool(mount.get("readOnly"))
        mounts.append(Mount(mount["mountPath"], source, tmpfs_bytes, read_only))
    return sorted(mounts, key=lambda m: m.target.rstrip("/").count("/"))
