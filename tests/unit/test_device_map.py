"""Balanced device maps over several whole GPUs, checked on a CPU: a tiny Qwen3 built here, placed on integer
devices that need not exist (accelerate only compares and sums their memory); the backend and the replica's loading
path with such a map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import build_tiny_mpnet, build_tiny_qwen3
from workers.backends.device_map import DeviceMapError, balanced_device_map

LAYERS = 6


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("qwen3_deep"), num_hidden_layers=LAYERS)


def weight_bytes(folder: Path) -> dict[str, int]:
    """Every stored weight and its size in float32, read from the checkpoint itself (not from our code)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        return {name: 4 * int(np.prod(weights.get_slice(name).get_shape())) for name in weights.keys()}  # noqa: SIM118


def device_of(device_map: dict[str, int], name: str) -> int:
    """The device of a module or weight: its own entry or its nearest ancestor's ("" is the whole model)."""
    probe = name
    while probe not in device_map:
        if not probe:
            raise AssertionError(f"{name} is placed nowhere in {device_map}")
        probe = probe.rpartition(".")[0]
    return device_map[probe]


def check_map(device_map: dict[str, int], folder: Path, usable: list[int]) -> list[int]:
    """The invariants of any map of the tiny Qwen3; returns each decoder layer's device."""
    weights = weight_bytes(folder)
    assert all(isinstance(device, int) and 0 <= device < len(usable) for device in device_map.values())
    placed = {name: device_of(device_map, name) for name in weights}  # every weight has a device
    per_device = [sum(size for name, size in weights.items() if placed[name] == d) for d in range(len(usable))]
    assert all(used <= room for used, room in zip(per_device, usable, strict=True)), (per_device, usable)
    assert not any(key.startswith("layers.") and key.count(".") > 1 for key in device_map)  # no layer is cut
    layer_devices = []
    for layer in range(LAYERS):
        devices = {device for name, device in placed.items() if name.startswith(f"layers.{layer}.")}
        assert len(devices) == 1, f"layer {layer} is split over {devices}"
        layer_devices += devices
    assert layer_devices == sorted(layer_devices)  # contiguous: each device holds one run of layers
    assert placed["embed_tokens.weight"] == 0
    assert placed["norm.weight"] == layer_devices[-1]
    return layer_devices


@pytest.mark.parametrize("devices", [2, 3])
def test_equal_gpus_share_the_layers(qwen3: Path, devices: int) -> None:
    total = sum(weight_bytes(qwen3).values())
    memory = [2 * total] * devices  # each could hold the whole model: balancing, not lack of room, spreads it
    device_map = balanced_device_map(qwen3, "float32", memory, headroom_fraction=0.1)
    layer_devices = check_map(device_map, qwen3, [int(m * 0.9) for m in memory])
    assert set(layer_devices) == set(range(devices))  # no device left empty


def test_a_small_gpu_gets_only_what_fits(qwen3: Path) -> None:
    weights = weight_bytes(qwen3)
    total = sum(weights.values())
    layer = sum(size for name, size in weights.items() if name.startswith("layers.0."))
    memory = [10 * total, int(1.5 * layer), 10 * total]
    device_map = balanced_device_map(qwen3, "float32", memory, headroom_fraction=0.0)
    layer_devices = check_map(device_map, qwen3, memory)
    assert layer_devices.count(1) == 1 and layer_devices.count(2) >= 1


def test_half_precision_halves_what_each_layer_needs(qwen3: Path) -> None:
    total = sum(weight_bytes(qwen3).values())
    # Too small for the float32 weights on two devices, roomy for float16 ones.
    memory = [int(0.4 * total)] * 2
    with pytest.raises(DeviceMapError):
        balanced_device_map(qwen3, "float32", memory, headroom_fraction=0.0)
    device_map = balanced_device_map(qwen3, "float16", memory, headroom_fraction=0.0)
    assert set(device_map.values()) == {0, 1}


def test_too_little_memory_is_one_line(qwen3: Path) -> None:
    total = sum(weight_bytes(qwen3).values())
    with pytest.raises(DeviceMapError, match=r"needs about [\d.,]+ MiB of float32 weights but the 2 GPU\(s\)") as e:
        balanced_device_map(qwen3, "float32", [total // 4, total // 4])
    assert "\n" not in str(e.value) and "raise gpus" in str(e.value)


def test_models_without_no_split_layers_and_bad_arguments_are_refused(
    qwen3: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    mpnet = build_tiny_mpnet(tmp_path_factory.mktemp("mpnet"))
    with pytest.raises(DeviceMapError, match="MPNetModel declares no layers that must stay whole.*gpus: 1"):
        balanced_device_map(mpnet, "float32", [2**30, 2**30])
    with pytest.raises(ValueError, match="headroom_fraction"):
        balanced_device_map(qwen3, "float32", [2**30, 2**30], headroom_fraction=1.0)
    with pytest.raises(ValueError, match="no device"):
        balanced_device_map(qwen3, "float32", [])


def test_backend_loads_through_a_device_map_and_gives_the_same_vectors(qwen3: Path) -> None:
    """The multi-device loading path on a CPU: the balanced map's modules all sent to "cpu" (no second device here),
    so from_pretrained(device_map=...), the input device and the pooling all run."""
    from workers.backends.torch_backend import TorchBackend

    device_map = balanced_device_map(qwen3, "float32", [2**30, 2**30])
    single = TorchBackend(qwen3, "lasttoken", padding_side="left")
    mapped = TorchBackend(qwen3, "lasttoken", padding_side="left", device_map=dict.fromkeys(device_map, "cpu"))
    batch = [[5, 6, 7, 0], [8, 0], [9, 10, 11, 12, 13, 0]]
    assert np.allclose(single.embed(batch), mapped.embed(batch), atol=1e-6)
    assert mapped.info.device == "cpu" and single.info.device == "cpu"


def test_replica_builds_the_map_for_an_instance_spanning_gpus(
    qwen3: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """load_backend: a gpus: 2 instance gets a balanced map over the visible GPUs' free memory (faked here)."""
    import workers.backends.device_map
    import workers.backends.gpu_probe
    import workers.backends.torch_backend
    from orchestrator.capabilities import Capabilities
    from orchestrator.config import parse_config
    from orchestrator.contracts.replica_spec import ReplicaSpec
    from orchestrator.hardware.topology import CpuTopology, GpuInfo, Topology
    from orchestrator.planning.planner import plan
    from workers.assembly import load_backend
    from workers.backends.gpu_probe import FLASH_NOT_INSTALLED, GpuFacts
    from workers.model_card import read_model_card

    l4s = tuple(GpuInfo(i, "NVIDIA L4", f"GPU-l4{i:06d}-0000-0000-0000-000000000000", 23034) for i in range(2))
    raw = {"model": {"path": str(qwen3)}, "mig_instances": [{"name": "big", "type": "gpu", "gpus": 2}]}
    placement = plan(
        parse_config(raw), Topology(cpu=CpuTopology(cores=(0,)), gpus=l4s), capabilities=Capabilities(accelerate=True)
    )
    spec = ReplicaSpec(
        placement, None, str(qwen3), "q", "auto", "auto", "auto", "left", {}, None, "none", None, None, True, 8, 1000
    )
    loaded: dict[str, object] = {}
    monkeypatch.setattr(workers.backends.device_map, "visible_free_memory", lambda: [2**30, 2**30])
    # Two L4s (sm89) as the pinned process sees them, without flash-attn.
    monkeypatch.setattr(
        workers.backends.gpu_probe, "probe_gpu", lambda: GpuFacts("NVIDIA L4", (8, 9), FLASH_NOT_INSTALLED)
    )
    monkeypatch.setattr(
        workers.backends.torch_backend, "TorchBackend", lambda *args, **kwargs: loaded.update(kwargs) or "backend"
    )
    assert load_backend(spec, placement.instances[0], read_model_card(qwen3), "cuda") == "backend"
    device_map = loaded["device_map"]
    assert isinstance(device_map, dict) and set(device_map.values()) == {0, 1}
