"""Tiny MPNet, Qwen3 and BERT cross-encoder checkpoints built locally (random weights), saved in the layout real
checkpoints use.

Nothing is downloaded: the configs come from transformers' config classes and the tokenizers are built with the
``tokenizers`` library from a small vocabulary, then everything is written to a folder (``config.json``,
``model.safetensors``, ``tokenizer.json``, sentence-transformers' ``modules.json`` and ``1_Pooling``) so the
service loads it through the same code as a real model.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = tuple(
    """
    the a an of to in on for with and or is are was be it this that gpu slice mig replica router queue
    batch model vector search query document passage answer question what how why when where which who
    embed text fast slow small large memory compute instance serve request token length padding left
    right cat dog mat sits runs jumps over under lazy quick brown fox retrieve relevant web given
    instruct
    """.split()
)
QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def _word_level_tokenizer(specials: list[str], template: tuple[str, str], unk: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: index for index, token in enumerate([*specials, *WORDS, *[f"w{n}" for n in range(64)]])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    single, pair = template
    special_ids = [(token, vocab[token]) for token in specials if token in single or token in pair]
    tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_ids)
    return tokenizer, vocab


def _write_sentence_transformers_files(folder: Path, pooling: str, dimension: int, prompts: dict[str, str]) -> None:
    (folder / "1_Pooling").mkdir(exist_ok=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    pooling_config = {
        "word_embedding_dimension": dimension,
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_cls_token": False,
        "pooling_mode_lasttoken": pooling == "lasttoken",
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    if prompts:
        (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))


def build_tiny_mpnet(folder: Path, seed: int = 0) -> Path:
    """A 2-layer MPNet with mean pooling (as all-mpnet-base-v2 uses)."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab = _word_level_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>"], ("<s> $A </s>", "<s> $A </s> </s> $B </s>"), "<unk>"
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    config = MPNetConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    torch.manual_seed(seed)
    MPNetModel(config).eval().save_pretrained(folder)
    _write_sentence_transformers_files(folder, "mean", config.hidden_size, {})
    return folder


def build_tiny_qwen3(
    folder: Path, seed: int = 0, with_eos_in_tokenizer: bool = True, num_hidden_layers: int = 2
) -> Path:
    """A Qwen3 (2 decoder layers unless told) with last-token pooling and Qwen3-Embedding's query prompt.

    Qwen3-Embedding's tokenizer appends ``<|endoftext|>`` to every text and pools that token; with
    ``with_eos_in_tokenizer=False`` the tokenizer does not, and the service must append it itself.
    """
    import torch
    from transformers import Qwen3Config, Qwen3Model

    folder.mkdir(parents=True, exist_ok=True)
    template = ("$A <|endoftext|>", "$A <|endoftext|> $B <|endoftext|>") if with_eos_in_tokenizer else ("$A", "$A $B")
    tokenizer, vocab = _word_level_tokenizer(["<|endoftext|>", "<|im_start|>", "<unk>"], template, "<unk>")
    tokenizer.save(str(folder / "tokenizer.json"))
    config = Qwen3Config(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    Qwen3Model(config).eval().save_pretrained(folder)
    _write_sentence_transformers_files(folder, "lasttoken", config.hidden_size, {"query": QUERY_PROMPT, "document": ""})
    return folder


def build_tiny_cross_encoder(folder: Path, seed: int = 0, model_max_length: int = 40) -> Path:
    """A 2-layer BERT cross-encoder with one output label (as ms-marco-MiniLM-L6-v2 is), in transformers' layout.

    The tokenizer puts ``[CLS] query [SEP] document [SEP]`` with token type ids 0 then 1, as BERT's does;
    ``tokenizer_config.json`` sets ``model_max_length`` below the 64 positions, so the limit comes from the tokenizer as
    sentence-transformers' CrossEncoder takes it. Weights are drawn wide (``initializer_range`` 0.3) so that scores
    spread over the sigmoid instead of all sitting at 0.5.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab = _word_level_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        ("[CLS] $A [SEP]", "[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1"),
        "[UNK]",
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "model_max_length": model_max_length, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        num_labels=1,
        pad_token_id=vocab["[PAD]"],
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    return folder
