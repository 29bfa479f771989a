"""Checks only a real GPU can make (marker ``gpu``; skipped without CUDA, run by scripts/gpu_check.sh).

fp16 vectors against CPU fp32 ones, the out-of-memory split against the real caching allocator, and the pin check
in a fresh process against the UUID CUDA really reports (gpu-audit W1), including a process that started CUDA first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.corpus import sentences


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm_ids(minilm_folder: Path) -> list[list[int]]:
    from workers.model_card import read_model_card
    from workers.tokenizer import TextTokenizer

    card = read_model_card(minilm_folder)
    return TextTokenizer(minilm_folder, card.max_input_tokens).encode(sentences(64), truncate=True)


def test_float16_on_the_gpu_matches_float32_on_the_cpu(minilm_folder: Path, minilm_ids: list[list[int]]) -> None:
    from workers.backends.torch_backend import TorchBackend

    cpu = TorchBackend(minilm_folder, "mean").embed(minilm_ids)
    gpu = TorchBackend(minilm_folder, "mean", "float16", "cuda").embed(minilm_ids)
    assert cosine(cpu, gpu).min() >= 0.999


def test_a_batch_the_allocator_cannot_hold_is_split_on_the_device(
    minilm_folder: Path, minilm_ids: list[list[int]]
) -> None:
    import torch

    from workers.backends.torch_backend import TorchBackend

    backend = TorchBackend(minilm_folder, "mean", "float16", "cuda")
    batch = [ids * 8 for ids in minilm_ids][:64]  # long rows: a big activation footprint
    batch = [ids[:256] for ids in batch]
    reference = backend.embed(batch[:1])
    torch.cuda.synchronize()
    total = torch.cuda.get_device_properties(0).total_memory
    # Let the allocator grow only 48 MiB past the weights: 64 x 256 tokens need more, 8 x 256 do not.
    limit = (torch.cuda.memory_reserved() + 48 * 2**20) / total
    torch.cuda.set_per_process_memory_fraction(limit)
    torch.cuda.empty_cache()
    try:
        with pytest.raises(torch.OutOfMemoryError):
            backend._embed_once(batch)
        vectors = backend.embed(batch)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert vectors.shape[0] == 64 and cosine(vectors[:1], reference).min() >= 0.999


def _first_device() -> tuple[str, str | None, int]:
    from orchestrator.hardware.probe import probe_topology

    topology = probe_topology()
    slices = [(s, g) for g in topology.gpus for s in g.slices]
    if slices:
        slice_, gpu = slices[0]
        return slice_.uuid, gpu.uuid, slice_.memory_mb
    return topology.gpus[0].uuid, None, topology.gpus[0].memory_mb


PIN = """
import json, sys
{before}
from workers.pinning import PinningError, pin_to_gpu_devices
try:
    print(json.dumps({{"ok": pin_to_gpu_devices([sys.argv[1]], sys.argv[2] or None, int(sys.argv[3]))}}))
except PinningError as error:
    print(json.dumps({{"error": str(error)}}))
"""


def _pin_child(before: str = "") -> dict[str, str]:
    uuid, parent, memory_mb = _first_device()
    done = subprocess.run(
        [sys.executable, "-c", PIN.format(before=before), uuid, parent or "", str(memory_mb)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_pin_check_passes_on_the_real_device() -> None:
    answer = _pin_child()
    assert "ok" in answer, answer


def test_the_pin_check_refuses_a_process_whose_cuda_started_first() -> None:
    answer = _pin_child("import os, torch; os.environ['CUDA_VISIBLE_DEVICES'] = ''; torch.cuda.is_available()")
    assert "before it was pinned" in answer.get("error", ""), answer
