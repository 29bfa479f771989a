"""ONNX Runtime backend: export once, reuse, rebuild when corrupt, same vectors as PyTorch; int8 accuracy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from orchestrator.config import parse_config
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.topology import CpuTopology, Topology
from orchestrator.model_source import measure_footprint
from orchestrator.planning.engine_choice import EngineChoiceError, choose_backend
from orchestrator.planning.planner import plan
from tests.corpus import sentences
from tests.tiny_models import build_tiny_mpnet, build_tiny_qwen3
from workers.backends import onnx_export
from workers.backends.onnx_backend import OnnxBackend
from workers.backends.onnx_export import GRAPH, cached_graph, entry_is_valid
from workers.backends.torch_backend import TorchBackend
from workers.model_card import read_model_card
from workers.tokenizer import TextTokenizer


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm_graph(minilm_folder: Path) -> Path:
    """The real export, into the machine's default cache (a later `up` reuses it)."""
    return cached_graph(minilm_folder).path


def onnx_backend(folder: Path, graph: Path) -> tuple[TextTokenizer, OnnxBackend]:
    card = read_model_card(folder)
    return TextTokenizer(folder, card.max_input_tokens), OnnxBackend(
        graph, card.pooling, 1, card.pad_token_id, card.hidden_size
    )


def test_minilm_onnx_matches_sentence_transformers_alone_and_batched(minilm_folder: Path, minilm_graph: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = sentences(48, seed=4) + ["short"]
    tokenizer, backend = onnx_backend(minilm_folder, minilm_graph)
    ids = tokenizer.encode(texts, truncate=True)
    expected = SentenceTransformer(str(minilm_folder), device="cpu").encode(texts)
    assert cosine(backend.embed(ids), expected).min() >= 0.9999
    assert cosine(np.stack([backend.embed([one])[0] for one in ids]), expected).min() >= 0.9999
    assert backend.info.backend == "onnx" and backend.info.dimensions == 384


def test_cache_is_reused_without_exporting(minilm_folder: Path, minilm_graph: Path, tmp_path: Path) -> None:
    calls: list[Path] = []

    def exporter(folder: Path, target: Path) -> None:
        calls.append(folder)
        shutil.copyfile(minilm_graph, target)

    first = cached_graph(minilm_folder, tmp_path, exporter=exporter)
    second = cached_graph(minilm_folder, tmp_path, exporter=exporter)
    assert len(calls) == 1 and first.exported_now and not second.exported_now
    assert first.path == second.path and entry_is_valid(first.path.parent)


def test_corrupt_or_partial_entries_are_rebuilt(minilm_folder: Path, minilm_graph: Path, tmp_path: Path) -> None:
    calls: list[Path] = []

    def exporter(folder: Path, target: Path) -> None:
        calls.append(folder)
        shutil.copyfile(minilm_graph, target)

    graph = cached_graph(minilm_folder, tmp_path, exporter=exporter).path
    with graph.open("r+b") as handle:  # flip bytes in the middle of the weights
        handle.seek(1_000_000)
        handle.write(b"\x00" * 64)
    assert not entry_is_valid(graph.parent)
    rebuilt = cached_graph(minilm_folder, tmp_path, exporter=exporter)
    assert len(calls) == 2 and rebuilt.exported_now and entry_is_valid(graph.parent)
    (graph.parent / "manifest.json").unlink()  # an export interrupted before its manifest was written
    assert cached_graph(minilm_folder, tmp_path, exporter=exporter).exported_now and len(calls) == 3


def test_new_exporter_versions_give_a_new_entry(minilm_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = onnx_export.cache_key(minilm_folder)
    monkeypatch.setattr(onnx_export, "_versions", lambda: "torch=99")
    assert onnx_export.cache_key(minilm_folder) != before
    assert onnx_export.cache_key(minilm_folder, "int8") != onnx_export.cache_key(minilm_folder)


def test_tiny_mpnet_exports_with_the_same_vectors_as_torch(tmp_path: Path) -> None:
    folder = build_tiny_mpnet(tmp_path / "mpnet")
    graph = cached_graph(folder, tmp_path / "cache").path
    tokenizer, backend = onnx_backend(folder, graph)
    card = read_model_card(folder)
    reference = TorchBackend(folder, card.pooling, attn_implementation="eager")
    texts = ["the quick brown fox", "gpu", "what is a mig slice and how does the router choose"]
    ids = tokenizer.encode(texts, truncate=False)
    assert cosine(backend.embed(ids), reference.embed(ids)).min() >= 0.9999


def test_onnx_on_an_unsupported_family_is_refused_at_plan_time(tmp_path: Path) -> None:
    folder = build_tiny_qwen3(tmp_path / "qwen3")
    footprint = measure_footprint(folder)

    def plan_with(**model: object):
        config = parse_config({"model": {"path": str(folder), **model}, "mig_instances": [{"name": "a"}]})
        return plan(config, Topology(cpu=CpuTopology((0, 1))), footprint)

    automatic = plan_with()
    assert automatic.instances[0].backend == "torch"
    assert "qwen3 does not export to ONNX" in automatic.backend_lines[0]
    with pytest.raises(PlanError, match=r"^model: backend onnx: qwen3 models cannot be exported"):
        plan_with(backend="onnx")
    with pytest.raises(PlanError, match="quantize int8 needs the onnx backend"):
        plan_with(quantize="int8")


def test_backend_choice_rules() -> None:
    assert choose_backend("cpu", "bert").backend == "onnx"
    assert choose_backend("cpu", "bert", "torch").backend == "torch"
    assert choose_backend("cuda", "bert").backend == "torch"
    with pytest.raises(EngineChoiceError, match="CPU pools only"):
        choose_backend("cuda", "bert", "onnx")


def test_int8_stays_close_to_fp32(minilm_folder: Path, minilm_graph: Path, tmp_path: Path) -> None:
    onnx_export.quantize_int8(minilm_graph, tmp_path / GRAPH)
    texts = sentences(128, seed=21)
    tokenizer, fp32 = onnx_backend(minilm_folder, minilm_graph)
    _, int8 = onnx_backend(minilm_folder, tmp_path / GRAPH)
    ids = tokenizer.encode(texts, truncate=True)
    similarity = cosine(int8.embed(ids), fp32.embed(ids))
    assert similarity.mean() >= 0.99, (similarity.mean(), similarity.min())
    assert similarity.min() >= 0.95


def test_pooling_gives_the_same_vectors_on_numpy_arrays_and_torch_tensors() -> None:
    """One implementation serves both backends: each method against a row-by-row reference, in both libraries."""
    import torch

    from workers.backends.pooling import pool

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # right padding, none, left padding
    real = [np.flatnonzero(row) for row in mask]
    reference = {
        "mean": np.stack([hidden[i, tokens].mean(0) for i, tokens in enumerate(real)]),
        "cls": hidden[:, 0],
        "lasttoken": np.stack([hidden[i, tokens[-1]] for i, tokens in enumerate(real)]),
    }
    for method, expected in reference.items():
        from_numpy = pool(hidden, mask, method)
        from_torch = pool(torch.from_numpy(hidden), torch.from_numpy(mask), method).numpy()
        assert from_numpy.dtype == np.float32 and np.allclose(from_numpy, expected, atol=1e-6), method
        assert np.allclose(from_torch, expected, atol=1e-6), method
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, mask, "max")


def test_minilm_graph_is_fused_and_the_manifest_says_so(minilm_graph: Path) -> None:
    import json

    manifest = json.loads((minilm_graph.parent / "manifest.json").read_text())
    assert manifest["fused_operators"].get("SkipLayerNormalization") == 12  # one per residual block of 6 layers
    assert manifest["fused_operators"].get("BiasGelu") == 6


def test_without_onnxruntime_auto_falls_back_to_torch_and_onnx_is_refused() -> None:
    assert choose_backend("cpu", "bert", onnx_available=False).backend == "torch"
    assert "not installed" in choose_backend("cpu", "bert", onnx_available=False).reason
    with pytest.raises(EngineChoiceError, match="not installed"):
        choose_backend("cpu", "bert", "onnx", onnx_available=False)
