"""What a model folder says about how to embed with it, read without importing torch.

Pooling comes from sentence-transformers' ``modules.json`` and ``1_Pooling/config.json``; the input limit from
``sentence_bert_config.json`` (``max_seq_length``) or the model config. A config override wins over both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.model_source import folder_input_limit

POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class ModelCard:
    """How to embed with a model folder.

    Attributes:
        pooling: ``mean``, ``cls`` or ``lasttoken``.
        normalize_by_default: whether sentence-transformers would L2-normalise (a Normalize module is listed).
        max_input_tokens: the longest input (special tokens included) the model is used with.
        model_type: the transformers ``model_type`` (``bert``, ``mpnet``, ``qwen3``...).
        prompts / default_prompt_name: sentence-transformers' named prompts (Qwen3-Embedding: ``query``).
        eos_token_id: the end-of-text token (last-token pooling pools it).
    """

    pooling: str
    normalize_by_default: bool
    max_input_tokens: int
    model_type: str
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    eos_token_id: int | None = None
    hidden_size: int = 0
    pad_token_id: int = 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _pooling_folder(folder: Path, modules: list[dict[str, Any]] | None) -> Path:
    for module in modules or []:
        if str(module.get("type", "")).endswith("Pooling"):
            return folder / str(module.get("path", "1_Pooling"))
    return folder / "1_Pooling"


def read_model_card(
    folder: Path,
    pooling_override: str = "auto",
    max_tokens_override: int | None = None,
    extra_prompts: dict[str, str] | None = None,
    default_prompt_override: str | None = None,
) -> ModelCard:
    """Read pooling, normalisation and input limit from ``folder``, applying the config's overrides.

    Without any sentence-transformers files, decoder models (Qwen3 and kin) pool the last token, encoders the mean.
    """
    config = _read_json(folder / "config.json") or {}
    model_type = str(config.get("model_type", "unknown"))
    modules = _read_json(folder / "modules.json")
    pooling = pooling_override
    if pooling == "auto":
        pooling_config = _read_json(_pooling_folder(folder, modules) / "config.json") or {}
        found = [name for key, name in POOLING_KEYS.items() if pooling_config.get(key)]
        decoder = bool(config.get("is_decoder")) or model_type.startswith(("qwen", "llama", "mistral", "gemma"))
        pooling = found[0] if found else ("lasttoken" if decoder else "mean")
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules or [])
    limit = max_tokens_override if max_tokens_override is not None else folder_input_limit(folder, config)
    st_settings = _read_json(folder / "config_sentence_transformers.json") or {}
    prompts = {**(st_settings.get("prompts") or {}), **(extra_prompts or {})}
    default_prompt = default_prompt_override or st_settings.get("default_prompt_name") or None
    if default_prompt is not None and default_prompt not in prompts:
        raise ValueError(f"default prompt {default_prompt!r} is not among the prompts ({', '.join(prompts) or 'none'})")
    eos = config.get("eos_token_id")
    eos_id = eos[0] if isinstance(eos, list) and eos else eos
    return ModelCard(
        pooling=pooling,
        normalize_by_default=normalize or modules is None,
        max_input_tokens=int(limit),
        model_type=model_type,
        prompts=prompts,
        default_prompt_name=default_prompt,
        eos_token_id=int(eos_id) if isinstance(eos_id, int) else None,
        hidden_size=int(config.get("hidden_size") or 0),
        pad_token_id=int(config.get("pad_token_id") if config.get("pad_token_id") is not None else (eos_id or 0)),
    )
