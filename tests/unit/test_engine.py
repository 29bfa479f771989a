"""The engine on three families: tiny MPNet and Qwen3 built here, real MiniLM; pooling, prompts, padding, overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.config import parse_config
from orchestrator.contracts.errors import PlanError
from orchestrator.hardware.topology import CpuTopology, Topology
from orchestrator.model_source import measure_footprint
from orchestrator.planning.engine_choice import EngineChoiceError, choose_engine, valid_tensor_parallel_sizes
from orchestrator.planning.planner import plan
from tests.tiny_models import QUERY_PROMPT, build_tiny_mpnet, build_tiny_qwen3
from workers.backends.torch_backend import TorchBackend
from workers.model_card import read_model_card
from workers.tokenizer import TextTokenizer

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "gpu",
    "what is a mig slice and how does the router choose a replica for a query",
    "a cat sits on the mat",
]


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_mpnet(tmp_path_factory.mktemp("mpnet"))


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="module")
def qwen3_no_eos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("qwen3_no_eos"), with_eos_in_tokenizer=False)


def load(folder: Path, padding_side: str = "right") -> tuple[TextTokenizer, TorchBackend]:
    """The replica's loading path: model card -> engine choice -> tokenizer + backend."""
    card = read_model_card(folder)
    engine = choose_engine("cpu", card.model_type)
    tokenizer = TextTokenizer(folder, card.max_input_tokens, card.eos_token_id if card.pooling == "lasttoken" else None)
    return tokenizer, TorchBackend(folder, card.pooling, engine.dtype, "cpu", engine.attn_implementation, padding_side)


def reference(folder: Path, texts: list[str], pooling: str, append_eos: int | None = None) -> np.ndarray:
    """Independent reference: transformers' own tokenizer class and model, one text at a time, pooled by hand."""
    import torch
    from transformers import AutoModel, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    vectors = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if append_eos is not None and ids[-1] != append_eos:
            ids = [*ids, append_eos]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        vectors.append((hidden.mean(0) if pooling == "mean" else hidden[-1]).numpy())
    return np.stack(vectors)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_model_cards(mpnet: Path, qwen3: Path) -> None:
    mp, qw = read_model_card(mpnet), read_model_card(qwen3)
    assert (mp.model_type, mp.pooling) == ("mpnet", "mean")
    assert (qw.model_type, qw.pooling, qw.prompts["query"]) == ("qwen3", "lasttoken", QUERY_PROMPT)
    assert qw.eos_token_id == 0
    (qwen3 / "1_Pooling" / "config.json").rename(qwen3 / "pooling.bak")
    try:  # without sentence-transformers' pooling file a decoder pools its last token
        assert read_model_card(qwen3).pooling == "lasttoken"
    finally:
        (qwen3 / "pooling.bak").rename(qwen3 / "1_Pooling" / "config.json")


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_mpnet_matches_transformers_alone_and_batched(mpnet: Path, padding_side: str) -> None:
    tokenizer, backend = load(mpnet, padding_side)
    assert backend.info.attn_implementation == "eager"  # MPNet has no sdpa in transformers
    ids = tokenizer.encode(TEXTS, truncate=False)
    expected = reference(mpnet, TEXTS, "mean")
    assert cosine(backend.embed(ids), expected).min() >= 0.99999
    assert cosine(np.stack([backend.embed([one])[0] for one in ids]), expected).min() >= 0.99999


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_qwen3_last_token_matches_transformers_alone_and_batched(qwen3: Path, padding_side: str) -> None:
    tokenizer, backend = load(qwen3, padding_side)
    assert backend.info.attn_implementation == "sdpa"
    ids = tokenizer.encode(TEXTS, truncate=False)
    assert all(row[-1] == 0 for row in ids)  # <|endoftext|> ends every sequence, once
    assert all(row[-2] != 0 for row in ids)
    expected = reference(qwen3, TEXTS, "lasttoken")
    assert cosine(backend.embed(ids), expected).min() >= 0.99999
    assert cosine(np.stack([backend.embed([one])[0] for one in ids]), expected).min() >= 0.99999


def test_qwen3_end_of_text_is_appended_when_the_tokenizer_does_not(qwen3_no_eos: Path) -> None:
    tokenizer, backend = load(qwen3_no_eos)
    ids = tokenizer.encode(TEXTS, truncate=False)
    assert all(row[-1] == 0 for row in ids)
    expected = reference(qwen3_no_eos, TEXTS, "lasttoken", append_eos=0)
    assert cosine(backend.embed(ids), expected).min() >= 0.99999


def test_qwen3_query_prompt(qwen3: Path) -> None:
    tokenizer, backend = load(qwen3)
    prompted = backend.embed(tokenizer.encode(TEXTS[:2], truncate=False, prompt=QUERY_PROMPT))
    expected = reference(qwen3, [QUERY_PROMPT + text for text in TEXTS[:2]], "lasttoken")
    assert cosine(prompted, expected).min() >= 0.99999
    plain = backend.embed(tokenizer.encode(TEXTS[:2], truncate=False))
    assert cosine(prompted, plain).max() < 0.999  # the instruction changes the query vector


def test_left_truncation_keeps_the_prompt(qwen3: Path) -> None:
    tokenizer = TextTokenizer(qwen3, 24, 0)
    long_text = " ".join(["the fox"] * 30)
    ids = tokenizer.encode([long_text], truncate=True, direction="left", prompt=QUERY_PROMPT)[0]
    prompt_ids = tokenizer.encode([""], truncate=False, prompt=QUERY_PROMPT)[0][:-1]
    assert len(ids) == 24 and ids[: len(prompt_ids)] == prompt_ids and ids[-1] == 0


def test_left_truncation_of_a_text_past_the_character_bound_keeps_the_prompt_and_the_end(qwen3: Path) -> None:
    tokenizer = TextTokenizer(qwen3, 24, 0)
    long_text = " ".join(f"w{n % 64} the fox" for n in range(300))  # ~4,000 characters: cut before tokenising
    assert len(long_text) > 10 * tokenizer.max_text_chars
    ids = tokenizer.encode([long_text], truncate=True, direction="left", prompt=QUERY_PROMPT)[0]
    whole = TextTokenizer(qwen3, 10_000, 0).encode([long_text], truncate=False, prompt=QUERY_PROMPT)[0]
    prompt_ids = tokenizer.encode([""], truncate=False, prompt=QUERY_PROMPT)[0][:-1]
    assert ids == prompt_ids + whole[len(whole) - (24 - len(prompt_ids)) :]  # prompt, then the whole text's end


def test_minilm_batch_invariance_both_sides(minilm_folder: Path) -> None:
    for side in ("right", "left"):
        tokenizer, backend = load(minilm_folder, side)
        ids = tokenizer.encode(TEXTS, truncate=False)
        alone = np.stack([backend.embed([one])[0] for one in ids])
        assert cosine(backend.embed(ids), alone).min() >= 0.99999


def test_engine_choice_defaults_and_refusals() -> None:
    assert choose_engine("cpu", "bert") == choose_engine("cpu", "qwen3")
    assert (
        choose_engine("cpu", "bert").dtype == "float32" and choose_engine("cpu", "bert").attn_implementation == "sdpa"
    )
    gpu = choose_engine("cuda", "qwen3", flash_available=True)
    assert (gpu.dtype, gpu.attn_implementation) == ("float16", "flash_attention_2")
    assert choose_engine("cuda", "qwen3").attn_implementation == "sdpa"  # no flash-attn installed
    assert choose_engine("cuda", "mpnet", flash_available=True).attn_implementation == "eager"
    with pytest.raises(EngineChoiceError, match="flash_attention_2 on a CPU pool"):
        choose_engine("cpu", "qwen3", attention="flash_attention_2")
    with pytest.raises(EngineChoiceError, match="float16 on a CPU pool"):
        choose_engine("cpu", "bert", dtype="float16")
    with pytest.raises(EngineChoiceError, match="mpnet has no sdpa"):
        choose_engine("cpu", "mpnet", attention="sdpa")
    with pytest.raises(EngineChoiceError, match="does not import here"):
        choose_engine("cuda", "qwen3", attention="flash_attention_2")
    with pytest.raises(EngineChoiceError, match="needs float16 or bfloat16"):
        choose_engine("cuda", "qwen3", dtype="float32", attention="flash_attention_2", flash_available=True)


def test_impossible_overrides_are_refused_at_plan_time(qwen3: Path) -> None:
    def plan_with(**model: object) -> None:
        config = parse_config({"model": {"path": str(qwen3), **model}, "mig_instances": [{"name": "a"}]})
        plan(config, Topology(cpu=CpuTopology((0, 1))), measure_footprint(qwen3))

    plan_with()  # defaults are fine
    with pytest.raises(
        PlanError, match=r"^model: attn_implementation flash_attention_2 on a CPU pool.*\(instances a\)"
    ):
        plan_with(attn_implementation="flash_attention_2")
    with pytest.raises(PlanError, match="float16 on a CPU pool"):
        plan_with(dtype="float16")
    # Qwen3 tiny: 4 attention heads, 2 key-value heads -> 1 and 2 divide both.
    with pytest.raises(PlanError, match=r"tensor_parallel_size 4 does not divide .* valid sizes: 1, 2"):
        plan_with(tensor_parallel_size=4)
    with pytest.raises(PlanError, match="tensor_parallel_size 2 is valid for this model but serving"):
        plan_with(tensor_parallel_size=2)


def test_tensor_parallel_sizes_follow_the_seed() -> None:
    assert valid_tensor_parallel_sizes(40) == [1, 2, 4, 5, 8, 10, 20, 40]
    assert valid_tensor_parallel_sizes(64, 8) == [1, 2, 4, 8]
    assert valid_tensor_parallel_sizes(16, 8) == [1, 2, 4, 8]  # Qwen3-Embedding-0.6B: 16 heads, 8 key-value heads


def test_auto_precision_follows_the_training_dtype_where_the_gpu_computes_bfloat16() -> None:
    """gpu-audit W8: a bf16-trained Qwen3 in float16 may overflow; bfloat16 is native from sm80 on."""
    h100, t4 = (9, 0), (7, 5)
    assert choose_engine("cuda", "qwen3", compute_capability=h100, trained_dtype="bfloat16").dtype == "bfloat16"
    assert choose_engine("cuda", "qwen3", compute_capability=h100, trained_dtype="float32").dtype == "float16"
    assert choose_engine("cuda", "qwen3", compute_capability=t4, trained_dtype="bfloat16").dtype == "float16"
    # Planning has not seen the GPU: float16 as before; the replica decides again on its device.
    assert choose_engine("cuda", "qwen3", trained_dtype="bfloat16").dtype == "float16"
    # float16 stays an option, and CPU is untouched.
    assert choose_engine("cuda", "qwen3", "float16", compute_capability=h100, trained_dtype="bfloat16").dtype == (
        "float16"
    )
    assert choose_engine("cpu", "qwen3", compute_capability=None, trained_dtype="bfloat16").dtype == "float32"
    with pytest.raises(EngineChoiceError, match=r"bfloat16 needs a GPU of compute capability 8.0 .*this GPU is 7.5"):
        choose_engine("cuda", "qwen3", "bfloat16", compute_capability=t4)


def test_flash_attention_only_where_it_is_usable_and_the_gpu_is_ampere_or_newer() -> None:
    """gpu-audit B5: FA2 chosen on a pre-Ampere GPU, or with a flash-attn that does not load, killed the replica."""
    a100 = choose_engine("cuda", "qwen3", flash_available=True, compute_capability=(8, 0))
    assert (a100.attn_implementation, a100.note) == ("flash_attention_2", "")
    t4 = choose_engine("cuda", "qwen3", flash_available=True, compute_capability=(7, 5))
    assert t4.attn_implementation == "sdpa" and "needs compute capability 8.0 or newer, this GPU is 7.5" in t4.note
    broken = choose_engine("cuda", "qwen3", flash_available=False, compute_capability=(9, 0))
    assert (broken.attn_implementation, broken.note) == ("sdpa", "flash-attn is not usable here")
    assert choose_engine("cuda", "bert", flash_available=True, compute_capability=(9, 0)).note == ""  # never FA2
    with pytest.raises(EngineChoiceError, match=r"flash_attention_2 needs a GPU of compute capability 8.0"):
        choose_engine("cuda", "qwen3", attention="flash_attention_2", flash_available=True, compute_capability=(7, 5))
