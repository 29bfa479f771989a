"""gpu-audit B3: the memory an instance needs counts weights, CUDA context and its largest batch's activations.

Shapes are the published configs (Qwen3-Embedding-4B's config.json values; the real MiniLM's file); the parameter
counts derived from them are checked against the published sizes and the weight files, not against the formula.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.model_source import measure_footprint
from orchestrator.planning.memory_estimate import (
    BATCH_TOKENS_STEP,
    ModelShape,
    estimate_memory,
    fit_problem,
    largest_max_batch_tokens,
)

QWEN3_EMBEDDING_4B = {  # Qwen/Qwen3-Embedding-4B config.json
    "model_type": "qwen3",
    "hidden_size": 2560,
    "num_hidden_layers": 36,
    "intermediate_size": 9728,
    "vocab_size": 151665,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "torch_dtype": "bfloat16",
}
H100_1G_10GB_MIB = 9984  # NVML's memory of an H100 80GB 1g.10gb slice (about 9.75 GiB)
A100_1G_5GB_MIB = 4864
H100_2G_20GB_MIB = 19968


def test_parameter_counts_match_the_published_models(minilm_folder: Path) -> None:
    qwen = ModelShape.from_config(QWEN3_EMBEDDING_4B).parameter_count()
    assert abs(qwen - 4_021_774_336) / 4_021_774_336 < 0.002  # Qwen3-Embedding-4B: 4.02 B parameters
    minilm = ModelShape.from_config(json.loads((minilm_folder / "config.json").read_text()))
    measured = measure_footprint(minilm_folder).parameters  # from the weight file's size
    assert abs(minilm.parameter_count() - measured) / measured < 0.01


def test_qwen3_embedding_4b_on_a_1g_10gb_slice_is_refused_with_the_batch_budget_that_fits() -> None:
    shape = ModelShape.from_config(QWEN3_EMBEDDING_4B)
    problem = fit_problem(shape, "bfloat16", 16384, 1, 8192, H100_1G_10GB_MIB, "1g.10gb on GPU 0")
    assert problem is not None and problem.startswith("the model needs about ")
    assert "but 1g.10gb on GPU 0 has 9,984 MiB: set batching.max_batch_tokens to " in problem
    largest = largest_max_batch_tokens(shape, 2, 1, 8192, H100_1G_10GB_MIB)
    assert largest is not None and f"max_batch_tokens to {largest} or less" in problem
    # The budget named fits, one step more does not, and it is below what was asked.
    assert 8192 <= largest < 16384 and largest % BATCH_TOKENS_STEP == 0
    assert estimate_memory(shape, 2, largest, 1, 8192).total_mib <= H100_1G_10GB_MIB
    assert estimate_memory(shape, 2, largest + BATCH_TOKENS_STEP, 1, 8192).total_mib > H100_1G_10GB_MIB
    assert fit_problem(shape, "bfloat16", largest, 1, 8192, H100_1G_10GB_MIB, "1g.10gb on GPU 0") is None
    # Two batches computing at once need twice the activations: less room for each.
    two = largest_max_batch_tokens(shape, 2, 2, 8192, H100_1G_10GB_MIB)
    assert two is None or two < largest


def test_the_estimate_counts_what_the_old_one_missed() -> None:
    """The old estimate (weights x 1.1 + 1 GiB) accepted 4B on 1g.10gb; activations of 16,384 tokens exceed 1 GiB."""
    shape = ModelShape.from_config(QWEN3_EMBEDDING_4B)
    estimate = estimate_memory(shape, 2, 16384, 1, 8192)
    assert 7600 < estimate.weights_mib < 7720 and estimate.context_mib > 0
    assert estimate.activations_mib > 1024
    assert estimate_memory(shape, 2, 16384, 2, 8192).activations_mib == 2 * estimate.activations_mib


def test_a_text_too_long_to_fit_alone_and_weights_that_never_fit() -> None:
    shape = ModelShape.from_config(QWEN3_EMBEDDING_4B)
    long_texts = fit_problem(shape, "bfloat16", 16384, 1, 32768, H100_1G_10GB_MIB, "1g.10gb on GPU 0")
    assert long_texts is not None and "even one text of 32768 tokens does not fit; set model.max_input_tokens to" in (
        long_texts
    )
    assert fit_problem(shape, "bfloat16", 16384, 1, 8192, A100_1G_5GB_MIB, "1g.5gb on GPU 0").endswith(
        "the weights alone do not fit, choose a bigger profile"
    )
    assert fit_problem(shape, "bfloat16", 16384, 1, 8192, H100_2G_20GB_MIB, "2g.20gb on GPU 0") is None


def test_small_models_fit_the_smallest_slice(minilm_folder: Path) -> None:
    minilm = ModelShape.from_config(json.loads((minilm_folder / "config.json").read_text()))
    assert fit_problem(minilm, "float16", 16384, 2, 256, A100_1G_5GB_MIB, "1g.5gb on GPU 0") is None


def test_the_planner_refuses_4b_on_1g_10gb_and_plans_it_with_the_budget_it_names() -> None:
    """The plan runs the estimate per instance with the instance's own batching limits (gpu-audit B3)."""
    import re

    import pytest

    from orchestrator.config import parse_config
    from orchestrator.contracts.errors import PlanError
    from orchestrator.hardware.topology import GpuInfo
    from orchestrator.model_source import ModelFootprint
    from orchestrator.planning.planner import plan
    from tests.unit.test_mig_planner import H100_80GB, mig, topo

    uuid = "GPU-h1000000-0000-0000-0000-000000000000"
    h100 = GpuInfo(
        0,
        "NVIDIA H100 80GB HBM3",
        uuid,
        81559,
        mig_supported=True,
        mig_enabled=True,
        mig_pending_enabled=True,
        profiles=H100_80GB,
        slices=(mig(0, uuid, H100_80GB[0], 9),),
        memory_slice_count=8,
    )
    footprint = ModelFootprint(
        parameters=4_021_774_336,
        stored_dtype_bytes=2,
        model_type="qwen3",
        shape=ModelShape.from_config(QWEN3_EMBEDDING_4B),
        max_input_tokens=40960,
    )

    def config(**batching: int):
        model = {"path": ".", "max_input_tokens": 8192}
        return parse_config({"model": model, "batching": batching, "mig_instances": [{"name": "q", "type": "1g.10gb"}]})

    with pytest.raises(PlanError) as refused:
        plan(config(max_batch_tokens=16384), topo(h100), footprint)
    message = str(refused.value)
    assert "1g.10gb on GPU 0" in message and "set batching.max_batch_tokens to" in message
    fits = int(re.search(r"max_batch_tokens to (\d+)", message).group(1))
    assert 8192 <= fits < 16384
    placed = plan(config(max_batch_tokens=fits), topo(h100), footprint)
    assert placed.instances[0].max_batch_tokens == fits
