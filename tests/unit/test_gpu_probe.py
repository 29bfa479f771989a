"""gpu-audit B5/W8 in the replica: flash attention counts as usable only when it really loads here, and the engine
is chosen with the pinned GPU's capability and the model's training dtype.

The flash-attn installs are real packages on ``sys.path`` (a ``flash_attn`` package, and a ``flash_attn_2_cuda``
extension stand-in that fails to load as a build for another torch does); only transformers' own verdict on the
distribution, which also requires CUDA, is answered by the test.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

import pytest
import transformers.utils

import workers.backends.gpu_probe
import workers.backends.torch_backend
from orchestrator.config import parse_config
from orchestrator.contracts.replica_spec import ReplicaSpec
from orchestrator.hardware.topology import CpuTopology, GpuInfo, Topology
from orchestrator.planning.planner import plan
from tests.tiny_models import build_tiny_qwen3
from workers.assembly import load_backend
from workers.backends.gpu_probe import FLASH_NOT_INSTALLED, GpuFacts, flash_attention_problem, trained_dtype
from workers.model_card import read_model_card

UNDEFINED_SYMBOL = (
    "flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: "
    "_ZN3c104cuda9SetDeviceEab"  # a wheel built against another torch's ABI
)


@pytest.fixture
def flash_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install a flash_attn package on sys.path; the returned function writes its CUDA extension's module."""
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text("__version__ = '2.8.3'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()

    def extension(body: str) -> None:
        (tmp_path / "flash_attn_2_cuda.py").write_text(body)
        importlib.invalidate_caches()

    yield extension
    for name in ("flash_attn", "flash_attn_2_cuda"):
        sys.modules.pop(name, None)


def test_flash_attention_absent_or_refused_by_transformers() -> None:
    assert flash_attention_problem() == FLASH_NOT_INSTALLED


def test_a_flash_attn_transformers_does_not_accept_is_not_used(flash_install, monkeypatch: pytest.MonkeyPatch) -> None:
    flash_install("")
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)  # FA4's flash_attn, say
    assert "transformers does not accept the installed flash_attn" in flash_attention_problem()


def test_a_flash_attn_whose_extension_does_not_load_is_not_used(flash_install, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    flash_install(f"raise ImportError({UNDEFINED_SYMBOL!r})\n")
    problem = flash_attention_problem()
    assert problem is not None and "CUDA extension does not load (ImportError: " in problem
    assert "undefined symbol" in problem
    flash_install("")  # the extension imports: usable
    sys.modules.pop("flash_attn_2_cuda", None)
    assert flash_attention_problem() is None


def test_training_dtype_is_read_from_either_config_key(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert trained_dtype(tmp_path) == "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "float16"}))
    assert trained_dtype(tmp_path) == "float16"
    (tmp_path / "config.json").write_text("{}")
    assert trained_dtype(tmp_path) is None


@pytest.mark.parametrize(
    ("capability", "flash_problem", "expected", "level"),
    [
        ((9, 0), FLASH_NOT_INSTALLED, ("bfloat16", "sdpa"), logging.INFO),
        ((9, 0), None, ("bfloat16", "flash_attention_2"), logging.INFO),
        ((9, 0), "flash-attn's CUDA extension does not load (ImportError: x)", ("bfloat16", "sdpa"), logging.WARNING),
        ((7, 5), None, ("float16", "sdpa"), logging.INFO),  # a fact of the hardware, not a broken install
    ],
)
def test_the_replica_chooses_with_what_it_sees_on_its_gpu(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capability: tuple[int, int],
    flash_problem: str | None,
    expected: tuple[str, str],
    level: int,
) -> None:
    folder = build_tiny_qwen3(tmp_path / "qwen3")
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = "bfloat16"  # Qwen3-Embedding ships bfloat16 weights
    config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(config))
    gpu = (GpuInfo(0, "NVIDIA H100 80GB HBM3", "GPU-4579f2e7-8948-4ba8-8960-aef04e672684", 81559),)
    raw = {"model": {"path": str(folder)}, "mig_instances": [{"name": "g", "type": "gpu"}]}
    placement = plan(parse_config(raw), Topology(cpu=CpuTopology(cores=(0,)), gpus=gpu))
    spec = ReplicaSpec(
        placement, None, str(folder), "q", "lasttoken", "auto", "auto", "left", {}, None, "none", None, None, True, 8, 1
    )
    name = "NVIDIA H100 80GB HBM3" if capability >= (8, 0) else "Tesla T4"
    monkeypatch.setattr(workers.backends.gpu_probe, "probe_gpu", lambda: GpuFacts(name, capability, flash_problem))
    loaded: list[tuple] = []
    monkeypatch.setattr(workers.backends.torch_backend, "TorchBackend", lambda *a, **k: loaded.append(a) or "backend")
    with caplog.at_level(logging.INFO, logger="workers.assembly"):
        assert load_backend(spec, placement.instances[0], read_model_card(folder), "cuda") == "backend"
    (args,) = loaded
    assert (args[2], args[4]) == expected  # TorchBackend(folder, pooling, dtype, device, attention, ...)
    (record,) = [r for r in caplog.records if r.name == "workers.assembly"]
    assert record.levelno == level and f"{expected[0]}, {expected[1]} attention" in record.getMessage()
    if flash_problem is not None and expected[1] == "sdpa":
        assert flash_problem in record.getMessage()
