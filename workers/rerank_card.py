"""What a cross-encoder folder says about how to score pairs with it, read without importing torch.

A reranker here is what sentence-transformers' ``CrossEncoder`` loads as a sequence classifier with one output
label (ms-marco-MiniLM cross-encoders, bge-reranker): ``config.json`` names a ``...ForSequenceClassification``
architecture. The card carries the facts the service needs to score as ``CrossEncoder.predict`` does:

* the activation on the logit: the one ``config.json`` names (``sentence_transformers.activation_fn``, or the
  ``sbert_ce_default_activation_function`` of models saved before sentence-transformers 4), else sigmoid, as
  CrossEncoder uses for one-label models. Like CrossEncoder without ``trust_remote_code``, only ``torch.*`` paths are
  honoured; another is ignored with a warning.
* the input limit of a pair, special tokens included: the config's ``model.max_input_tokens``, else
  sentence-transformers' ``max_seq_length`` (``sentence_bert_config.json``), else the tokenizer's
  ``model_max_length`` capped at the model's ``max_position_embeddings`` (what CrossEncoder truncates to), else 512.
* whether the model reads token type ids (BERT's segment embeddings: ``type_vocab_size`` > 1; RoBERTa-family models
  have one type and get none, as their tokenizers send none).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ACTIVATIONS = ("sigmoid", "identity", "tanh")
DEFAULT_LIMIT = 512
# Tokenizers without a stated limit report transformers' VERY_LARGE_INTEGER (about 1e30); no model reads more than this.
_UNSTATED_LIMIT = 10**7


class NotACrossEncoder(ValueError):
    """The folder is not a one-label sequence classifier, so its scores would be meaningless."""


@dataclass(frozen=True)
class RerankCard:
    """How to score pairs with a cross-encoder folder.

    Attributes:
        model_type: the transformers ``model_type`` (``bert``, ``xlm-roberta``...).
        max_input_tokens: the longest pair (special tokens included) the model is given; longer ones are truncated.
        activation: ``sigmoid``, ``identity`` or ``tanh``, applied to the logit unless raw scores are asked for.
        pad_token_id: the id padding rows are filled with.
        reads_token_type_ids: whether the model is given the pair's segment ids.
    """

    model_type: str
    max_input_tokens: int
    activation: str
    pad_token_id: int
    reads_token_type_ids: bool


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def read_rerank_card(folder: Path, max_tokens_override: int | None = None) -> RerankCard:
    """Read ``folder``'s cross-encoder facts (see the module docstring).

    Raises NotACrossEncoder when ``config.json`` names no sequence-classification architecture or more than one
    label, and ValueError for a ``torch.*`` activation other than sigmoid, identity and tanh.
    """
    config = _read_json(folder / "config.json") or {}
    architectures = config.get("architectures") or []
    if not any(str(name).endswith("ForSequenceClassification") for name in architectures):
        raise NotACrossEncoder(
            f"{folder} is not a cross-encoder: config.json names {', '.join(architectures) or 'no architecture'}, "
            "and a reranker (model.task: rerank) needs a ...ForSequenceClassification checkpoint (as "
            "ms-marco-MiniLM cross-encoders and bge-reranker are); an embedding model is served with task: embed"
        )
    labels = len(config["id2label"]) if config.get("id2label") else int(config.get("num_labels", 2))
    if labels != 1:
        raise NotACrossEncoder(
            f"{folder} has {labels} output labels: a reranker scores each pair with one (this is a classifier)"
        )
    pad = config.get("pad_token_id")
    return RerankCard(
        model_type=str(config.get("model_type", "unknown")),
        max_input_tokens=max_tokens_override or _pair_limit(folder, config),
        activation=_activation(config),
        pad_token_id=int(pad) if pad is not None else 0,
        reads_token_type_ids=int(config.get("type_vocab_size") or 0) > 1,
    )


def _pair_limit(folder: Path, config: dict[str, Any]) -> int:
    st_config = _read_json(folder / "sentence_bert_config.json") or {}
    if st_config.get("max_seq_length"):
        return int(st_config["max_seq_length"])
    stated = (_read_json(folder / "tokenizer_config.json") or {}).get("model_max_length")
    tokenizer_limit = int(stated) if stated is not None and int(stated) < _UNSTATED_LIMIT else None
    positions = config.get("max_position_embeddings")
    limits = [int(limit) for limit in (tokenizer_limit, positions) if limit is not None and int(limit) > 0]
    return min(limits) if limits else DEFAULT_LIMIT


def _activation(config: dict[str, Any]) -> str:
    path = (config.get("sentence_transformers") or {}).get("activation_fn") or config.get(
        "sbert_ce_default_activation_function"
    )
    if not path:
        return "sigmoid"
    if not str(path).startswith("torch."):
        logger.warning("activation %s is not a torch.* path: ignored, as CrossEncoder ignores it; using sigmoid", path)
        return "sigmoid"
    name = str(path).rsplit(".", 1)[-1].lower()
    if name not in ACTIVATIONS:
        raise ValueError(f"config.json's activation {path} is not supported here (use one of {', '.join(ACTIVATIONS)})")
    return name
