"""The hand-off for a chosen layout: the mig-parted config that creates it, and our config that serves on it.

mig-parted's format (``nvidia-mig-parted apply -f FILE -c NAME``; the GPU operator's MIG manager reads the same from
a ConfigMap): ``version: v1`` and ``mig-configs``, a named list of ``{devices: all | [indices], mig-enabled: true,
mig-devices: {profile: count}}``; ``device-filter`` (PCI device ids) keeps a config to the board it was chosen for.
GPUs with the same layout share one entry. Our config has one instance per slice, named by profile and GPU, and
the model section the measurements were taken with, so ``orchestrator plan`` accepts it as is once the slices exist.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import yaml

from orchestrator.advisor.layouts import GpuLayout
from orchestrator.advisor.measurements import Measurements
from orchestrator.hardware.mig_profile_table import BOARDS, BoardTable


def _device_filter(board: BoardTable) -> list[str]:
    return [f"0x{device:04X}10DE" for device, table in BOARDS.items() if table is board]


def mig_parted_config(board: BoardTable, gpus: tuple[GpuLayout, ...], name: str) -> dict[str, Any]:
    """The mig-parted config named ``name`` that cuts GPU i as ``gpus[i]``."""
    entries: list[dict[str, Any]] = []
    for index, layout in enumerate(gpus):
        devices = dict(Counter(p.name for p in layout.profiles))
        if entries and entries[-1]["mig-devices"] == devices:
            entries[-1]["devices"].append(index)
            continue
        entries.append(
            {"device-filter": _device_filter(board), "devices": [index], "mig-enabled": True, "mig-devices": devices}
        )
    if len(entries) == 1:  # one layout on every GPU: the node may have more or fewer than planned
        entries[0]["devices"] = "all"
    return {"version": "v1", "mig-configs": {name: entries}}


def orchestrator_config(gpus: tuple[GpuLayout, ...], measurements: Measurements) -> dict[str, Any]:
    """Our config: the measured model, one instance per slice (``<profile>-gpu<i>-<n>``)."""
    model: dict[str, Any] = {"name": measurements.model_name}
    for key in ("package", "path"):
        if measurements.model.get(key):
            model[key] = measurements.model[key]
    instances = []
    for index, layout in enumerate(gpus):
        for n, profile in enumerate(layout.profiles, 1):
            instances.append({"name": f"{profile.name}-gpu{index}-{n}", "type": profile.name})
    return {"version": 1, "model": model, "mig_instances": instances}


def to_yaml(document: dict[str, Any], comment: str) -> str:
    """YAML with a leading comment (mig-parted and our loader both ignore it)."""
    lines = "".join(f"# {line}\n" for line in comment.splitlines())
    return lines + yaml.safe_dump(document, sort_keys=False, default_flow_style=None)
