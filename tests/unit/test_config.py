from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.config import load_config, parse_config
from orchestrator.contracts.errors import ConfigError
from tests.conftest import REPO, SEED_CONFIG


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_seed_file_parses_as_written() -> None:
    config = parse_config(yaml.safe_load(SEED_CONFIG.read_text()), str(SEED_CONFIG))
    assert [i.name for i in config.mig_instances] == [f"embedding-instance-{n}" for n in (1, 2, 3)]
    assert config.mig_instances[2].batch_size == 4
    assert config.mig_instances[0].max_concurrency == 2
    assert config.balancer.weights() == (0.2, 0.8)  # the measured default (docs/balancer-study.md)


def test_seed_file_model_path_missing_is_one_line_per_instance() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(SEED_CONFIG)
    lines = caught.value.message.splitlines()
    assert len(lines) == 3
    assert all(str(SEED_CONFIG) in line and "model_path" in line and "does not exist" in line for line in lines)
    assert "mig_instances[2].model_path (embedding-instance-3)" in lines[2]


def test_shipped_config_loads_and_resolves_the_packaged_model() -> None:
    loaded = load_config(REPO / "configs" / "mig_config.yaml")
    assert loaded.model_name == "all-MiniLM-L6-v2"
    assert (loaded.model_folder / "model.safetensors").is_file()


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "mig_instances:\n  - name: a\n    batchsize: 8\nserver:\n  prot: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = caught.value.message.splitlines()
    assert f"{path}: mig_instances[0].batchsize: unknown key (did you mean 'batch_size'?)" in lines
    assert f"{path}: server.prot: unknown key (did you mean 'port'?)" in lines


def test_wrong_types_and_bounds(tmp_path: Path) -> None:
    path = write(tmp_path, "mig_instances:\n  - name: a\n    batch_size: eight\n  - name: b\n    max_concurrency: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = caught.value.message
    assert "mig_instances[0].batch_size" in message and "integer" in message
    assert "mig_instances[1].max_concurrency" in message and "greater than 0" in message


def test_duplicate_names(tmp_path: Path) -> None:
    path = write(tmp_path, "mig_instances:\n  - name: a\n  - name: a\n")
    with pytest.raises(ConfigError, match="duplicate instance name 'a'"):
        load_config(path)


def test_unsupported_version(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 2\nmig_instances:\n  - name: a\n")
    with pytest.raises(ConfigError, match=r"version: Input should be 1"):
        load_config(path)


def test_bad_profile_name(tmp_path: Path) -> None:
    path = write(tmp_path, "mig_instances:\n  - name: a\n    type: big-slice\n")
    with pytest.raises(ConfigError, match=r"mig_instances\[0\].type"):
        load_config(path)


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "mig_instances: [\n"))
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")


def test_model_path_relative_to_config_file(tmp_path: Path, minilm_folder: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "minilm").symlink_to(minilm_folder)
    path = write(tmp_path, "mig_instances:\n  - name: a\n    model_path: models/minilm\n")
    loaded = load_config(path)
    assert loaded.model_folder == minilm_folder.resolve()


def test_folder_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    path = write(tmp_path, "model:\n  path: empty\nmig_instances:\n  - name: a\n")
    with pytest.raises(ConfigError, match=r"model.path: 'empty' holds no model"):
        load_config(path)


def test_missing_package_says_how_to_install(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  package: no-such-model-pkg\nmig_instances:\n  - name: a\n")
    with pytest.raises(ConfigError, match=r"pip install no-such-model-pkg"):
        load_config(path)


def test_two_models_are_refused(tmp_path: Path, minilm_folder: Path) -> None:
    other = tmp_path / "copy"
    other.mkdir()
    for name in ("config.json", "model.safetensors"):
        (other / name).symlink_to(minilm_folder / name)
    path = write(tmp_path, f"mig_instances:\n  - name: a\n  - name: b\n    model_path: {other}\n")
    with pytest.raises(ConfigError, match="list each model under models:"):
        load_config(path)


def test_balancer_weights_cannot_both_be_zero(tmp_path: Path) -> None:
    path = write(tmp_path, "balancer:\n  load_weight: 0\n  queue_weight: 0\nmig_instances:\n  - name: a\n")
    with pytest.raises(ConfigError, match="cannot both be 0"):
        load_config(path)


def test_balancer_presets_and_explicit_weights() -> None:
    def weights(section: dict) -> tuple[float, float]:
        return parse_config({"balancer": section, "mig_instances": [{"name": "a"}]}).balancer.weights()

    assert weights({}) == (0.2, 0.8)
    assert weights({"preset": "seed"}) == (0.7, 0.3)
    assert weights({"preset": "seed", "queue_weight": 0.5}) == (0.7, 0.5)
    assert weights({"load_weight": 0, "queue_weight": 1}) == (0.0, 1.0)


def test_gpus_spans_whole_gpus_only() -> None:
    config = parse_config({"mig_instances": [{"name": "big", "type": "gpu", "gpus": 2}, {"name": "small"}]})
    assert [i.gpus for i in config.mig_instances] == [2, 1]
    for kind, why in (("1g.5gb", "CUDA shows a process one MIG slice only"), ("cpu", "grows by threads")):
        with pytest.raises(ConfigError) as caught:
            parse_config({"mig_instances": [{"name": "a", "type": kind, "gpus": 2}]}, "c.yaml")
        assert caught.value.message.startswith("c.yaml: mig_instances[0]: gpus: 2 needs type: gpu (whole GPUs")
        assert why in caught.value.message and "\n" not in caught.value.message
    with pytest.raises(ConfigError, match=r"mig_instances\[0\].gpus: Input should be greater than 0"):
        parse_config({"mig_instances": [{"name": "a", "type": "gpu", "gpus": 0}]})


def test_client_settings_default_to_text_only_and_auto_truncation() -> None:
    """Issue 18: token ids are opt-in (LangChain's tiktoken ids silently gave wrong vectors); truncation, as in TEI
    1.9 and sentence-transformers, is on unless turned off; both reach every replica's spec."""
    from orchestrator.contracts.plan import Plan
    from orchestrator.contracts.replica_spec import ReplicaSpec

    def spec_of(server: dict) -> ReplicaSpec:
        config = parse_config({"server": server, "mig_instances": [{"name": "a"}]})
        sections = {"model": config.model, "server": config.server}
        empty = Plan(instances=(), device_kind="cpu")
        return ReplicaSpec.from_config(
            empty, None, sections, model_folder="m", model_name="m", api_key_sha256=None, lane_token=None
        )

    default = spec_of({})
    assert (default.accept_token_ids, default.auto_truncate) == (False, True)
    changed = spec_of({"accept_token_ids": True, "auto_truncate": False})
    assert (changed.accept_token_ids, changed.auto_truncate) == (True, False)
    with pytest.raises(ConfigError, match=r"c.yaml: server.accept_token_ids: Input should be a valid boolean"):
        parse_config({"server": {"accept_token_ids": "sometimes"}, "mig_instances": [{"name": "a"}]}, "c.yaml")


def test_model_task_defaults_to_embed_and_a_reranker_runs_on_torch() -> None:
    def model(section: dict) -> object:
        return parse_config({"model": section, "mig_instances": [{"name": "a"}]}).model

    assert model({}).task == "embed" and model({}).backend == "auto"
    reranker = model({"task": "rerank", "path": "somewhere"})
    assert (reranker.task, reranker.backend, reranker.package) == ("rerank", "torch", None)
    # The embedding settings at their defaults, and the settings both tasks use, are fine on a reranker.
    plain = {"normalize": True, "pooling": "auto", "backend": "torch", "max_input_tokens": 256, "dtype": "float16"}
    assert model({"task": "rerank", **plain}).max_input_tokens == 256
    with pytest.raises(ConfigError, match=r"model.task: Input should be 'embed' or 'rerank'"):
        model({"task": "classify"})


def test_a_reranker_refuses_embedding_settings_one_line_each() -> None:
    section = {
        "task": "rerank",
        "pooling": "cls",
        "normalize": False,
        "prompts": {"query": "q: "},
        "default_prompt_name": "query",
        "padding_side": "left",
        "backend": "onnx",
        "quantize": "int8",
    }
    with pytest.raises(ConfigError) as caught:
        parse_config({"model": section, "mig_instances": [{"name": "a"}]}, "c.yaml")
    lines = caught.value.message.splitlines()
    refused = ["pooling", "normalize", "padding_side", "prompts", "default_prompt_name", "backend", "quantize"]
    assert sorted(line.split(": ")[1] for line in lines) == sorted(f"model.{name}" for name in refused)
    assert all(line.startswith("c.yaml: model.") and "a reranker (task: rerank)" in line for line in lines)
    assert any(
        "model.pooling: a reranker (task: rerank) scores a pair with its classification head" in x for x in lines
    )
    # The same settings on an embedding model are valid.
    section["task"] = "embed"
    section["backend"] = "onnx"
    assert parse_config({"model": section, "mig_instances": [{"name": "a"}]}).model.pooling == "cls"


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ({"modle": {}}, "<config>: modle: unknown key (did you mean 'model'?)"),
        ({"server": {"prot": 1}}, "<config>: server.prot: unknown key (did you mean 'port'?)"),
        ({"batching": {"max_wait": 1}}, "<config>: batching.max_wait: unknown key (did you mean 'max_wait_ms'?)"),
        ({"zzz": 1}, "<config>: zzz: unknown key"),
    ],
)
def test_an_unknown_key_names_the_key_it_is_close_to(raw: dict, line: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({**raw, "mig_instances": [{"name": "a"}]})
    assert refused.value.message == line


def test_a_bad_instance_type_or_name_is_explained_in_words_not_as_a_regular_expression() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"mig_instances": [{"name": "-a", "type": "1g10gb"}]})
    message = refused.value.message
    assert "'1g10gb' is not an instance type: a MIG profile as nvidia-smi names it (1g.5gb, 3g.40gb" in message
    assert "'-a' is not a usable name" in message and "^" not in message
