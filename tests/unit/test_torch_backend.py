"""The real MiniLM through our tokenizer, padding and pooling vs sentence-transformers' encode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.corpus import sentences
from workers.backends.torch_backend import TorchBackend
from workers.model_card import read_model_card
from workers.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def reference(minilm_folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder), device="cpu")


def test_model_card_reads_pooling_and_limit(minilm_folder: Path) -> None:
    card = read_model_card(minilm_folder)
    assert (card.pooling, card.max_input_tokens, card.model_type) == ("mean", 256, "bert")
    assert card.normalize_by_default
    assert read_model_card(minilm_folder, "cls", 128).pooling == "cls"
    assert read_model_card(minilm_folder, "cls", 128).max_input_tokens == 128


def test_vectors_match_sentence_transformers_alone_and_in_mixed_batches(minilm_folder: Path, reference) -> None:
    texts = sentences(24) + ["short", "a much longer sentence " * 20]
    card = read_model_card(minilm_folder)
    tokenizer = TextTokenizer(minilm_folder, card.max_input_tokens)
    backend = TorchBackend(minilm_folder, card.pooling)
    ids = tokenizer.encode(texts, truncate=True)
    batched = backend.embed(ids)
    alone = np.stack([backend.embed([one])[0] for one in ids])
    expected = reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True)

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    assert cosine(batched, expected).min() >= 0.99999
    assert cosine(alone, expected).min() >= 0.99999
    assert backend.info.dimensions == 384 and backend.info.dtype == "float32"


def test_a_decoder_model_builds_no_key_value_cache(tmp_path: Path) -> None:
    """gpu-audit B3: a Qwen3 forward pass kept every layer's keys and values for a decoding that never comes."""
    from tests.tiny_models import build_tiny_qwen3
    from workers.backends.torch_backend import TorchBackend

    folder = build_tiny_qwen3(tmp_path / "qwen3")
    backend = TorchBackend(folder, "lasttoken", padding_side="left")
    caches: list[object] = []
    backend._model.register_forward_hook(lambda _module, _inputs, output: caches.append(output.past_key_values))
    vectors = backend.embed([[1, 2, 3, 4], [5, 6]])
    assert vectors.shape[0] == 2 and caches == [None]


def test_mean_pooling_of_float16_states_does_not_overflow() -> None:
    """gpu-audit W8: 4,096 tokens of a 30.0 activation sum to 122,880, past float16's 65,504: the vector was inf."""
    import torch

    from workers.backends.pooling import pool

    hidden = torch.full((1, 4096, 8), 30.0, dtype=torch.float16)
    mask = torch.ones((1, 4096), dtype=torch.long)
    pooled = pool(hidden, mask, "mean")
    assert torch.isfinite(pooled).all() and torch.allclose(pooled, torch.full((1, 8), 30.0))


def test_a_gpu_load_places_the_weights_on_the_device_and_the_cpu_load_is_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """gpu-audit W12: from_pretrained materialises each weight where its device map says, instead of a host copy."""
    from workers.backends.torch_backend import load_placement

    assert load_placement("cuda", None, accelerate_available=True) == {"device_map": {"": "cuda"}}
    assert load_placement("cpu", None, accelerate_available=True) == {}
    assert load_placement("cuda", {"embeddings": 0, "layers.0": 1}, True) == {
        "device_map": {"embeddings": 0, "layers.0": 1}
    }
    with caplog.at_level("WARNING"):
        assert load_placement("cuda", None, accelerate_available=False) == {}
    assert "loaded in host memory, then moved to cuda" in caplog.text


def test_loading_through_a_one_device_map_gives_the_same_vectors(minilm_folder: Path) -> None:
    """The placement a GPU gets ({"": device}), given a host device transformers accepts the same way ("cpu:0"):
    the real from_pretrained takes it and the model computes as the plain CPU load does."""
    card = read_model_card(minilm_folder)
    ids = TextTokenizer(minilm_folder, card.max_input_tokens).encode(sentences(6), truncate=True)
    plain = TorchBackend(minilm_folder, card.pooling)
    placed = TorchBackend(minilm_folder, card.pooling, device="cpu:0")
    assert placed._model.get_input_embeddings().weight.device.type == "cpu"
    assert np.allclose(plain.embed(ids), placed.embed(ids), atol=1e-6)
