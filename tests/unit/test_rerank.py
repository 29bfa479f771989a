"""Rerankers end to end in-process: a tiny BERT cross-encoder built here, served by the real pair tokenizer, backend,
batcher and HTTP routes, against sentence-transformers' ``CrossEncoder.predict`` on the same folder."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.fakes import FakeBackend, fake_service
from tests.tiny_models import WORDS, build_tiny_cross_encoder
from workers.backends.cross_encoder import CrossEncoderBackend
from workers.batcher import Batcher
from workers.http_api import build_app
from workers.rerank_card import read_rerank_card
from workers.rerank_service import RerankService
from workers.rerank_tokenizer import PairTokenizer
from workers.service import ServiceInfo

LIMIT = 40  # the tiny model's tokenizer_config model_max_length
QUERY = "what is a gpu slice"
DOCUMENTS = [
    "a mig slice of the gpu",
    "the cat sits on the mat",
    "quick brown fox jumps over the lazy dog",
    "router queue batch model vector search",
    "gpu",
    "the replica serves the request fast",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


@pytest.fixture(scope="module")
def reference(folder: Path) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(folder), device="cpu")


class RecordingBackend:
    """The real cross-encoder backend, recording the size of every batch it is given."""

    def __init__(self, folder: Path) -> None:
        card = read_rerank_card(folder)
        self.inner = CrossEncoderBackend(folder, card.pad_token_id, card.reads_token_type_ids)
        self.info = self.inner.info
        self.batches: list[int] = []

    def embed(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        self.batches.append(len(batch))
        return self.inner.embed(batch)


def reranker(folder: Path, backend: RecordingBackend, batch_size: int = 4, **overrides: Any) -> RerankService:
    card = read_rerank_card(folder)
    settings: dict[str, Any] = {
        "model_name": "tiny-reranker",
        "instance": "pool-0",
        "max_input_tokens": card.max_input_tokens,
        "max_batch_tokens": 160,
        "max_inputs_per_request": 64,
        "max_request_bytes": 200_000,
        "normalize_by_default": False,
        "pooling": "none",
        "backend": backend.info,
        "task": "rerank",
        **overrides,
    }
    batcher = Batcher(backend.embed, batch_size, settings["max_batch_tokens"], 1, 512)
    tokenizer = PairTokenizer(folder, card.max_input_tokens)
    return RerankService(tokenizer, batcher, ServiceInfo(**settings), card.activation)


@pytest.fixture
def backend(folder: Path) -> RecordingBackend:
    return RecordingBackend(folder)


@pytest.fixture
def client(folder: Path, backend: RecordingBackend) -> Iterator[TestClient]:
    with TestClient(build_app(reranker(folder, backend)), raise_server_exceptions=False) as c:
        yield c


def expected(reference: Any, documents: Sequence[str], query: str = QUERY, **options: Any) -> np.ndarray:
    return reference.predict([(query, document) for document in documents], **options)


def test_the_card_reads_the_limit_as_cross_encoder_does(folder: Path, reference: Any) -> None:
    card = read_rerank_card(folder)
    # tokenizer_config's model_max_length (40) under the 64 positions: CrossEncoder's max_length is the smaller.
    assert card.max_input_tokens == reference.max_seq_length == LIMIT
    assert (card.activation, card.reads_token_type_ids, card.model_type) == ("sigmoid", True, "bert")
    assert read_rerank_card(folder, 24).max_input_tokens == 24


def test_tei_rerank_scores_equal_cross_encoder_best_first(client: TestClient, reference: Any) -> None:
    response = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True})
    assert response.status_code == 200, response.text
    ranks = response.json()
    scores = expected(reference, DOCUMENTS)
    assert sorted(rank["index"] for rank in ranks) == list(range(len(DOCUMENTS)))
    assert [rank["index"] for rank in ranks] == list(np.argsort(-scores, kind="stable"))
    for rank in ranks:
        assert rank["score"] == pytest.approx(float(scores[rank["index"]]), abs=1e-5)
        assert rank["text"] == DOCUMENTS[rank["index"]]
    assert min(scores) > 0 and max(scores) < 1 and np.ptp(scores) > 0.05  # sigmoid, and spread enough to order
    assert response.headers["x-instance"] == "pool-0"
    without_text = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS}).json()
    assert all(set(rank) == {"index", "score"} for rank in without_text)


def test_raw_scores_are_the_logits(client: TestClient, reference: Any) -> None:
    import torch

    ranks = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    logits = expected(reference, DOCUMENTS, activation_fn=torch.nn.Identity())
    assert {rank["index"]: rank["score"] for rank in ranks} == pytest.approx(dict(enumerate(logits.tolist())), abs=1e-5)


def test_v1_rerank_shape_top_n_and_documents(client: TestClient, reference: Any, folder: Path) -> None:
    from transformers import AutoTokenizer

    documents: list[Any] = [DOCUMENTS[0], {"text": DOCUMENTS[1]}, *DOCUMENTS[2:]]
    body = client.post("/v1/rerank", json={"model": "tiny-reranker", "query": QUERY, "documents": documents}).json()
    scores = expected(reference, DOCUMENTS)
    assert set(body) == {"id", "model", "results", "usage"} and body["id"].startswith("rerank-")
    assert body["model"] == "tiny-reranker"
    assert [item["index"] for item in body["results"]] == list(np.argsort(-scores, kind="stable"))
    for item in body["results"]:
        assert item["relevance_score"] == pytest.approx(float(scores[item["index"]]), abs=1e-5)
        assert item["document"] == {"text": DOCUMENTS[item["index"]]}  # returned unless return_documents is false
    hf = AutoTokenizer.from_pretrained(folder)
    tokens = sum(len(hf(QUERY, document)["input_ids"]) for document in DOCUMENTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    top = client.post(
        "/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": False}
    )
    assert [item["index"] for item in top.json()["results"]] == [item["index"] for item in body["results"][:2]]
    assert all(set(item) == {"index", "relevance_score"} for item in top.json()["results"])
    everything = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 0}).json()
    assert len(everything["results"]) == len(DOCUMENTS)  # vLLM's 0: all
    wrong_model = client.post("/v1/rerank", json={"model": "other", "query": QUERY, "documents": DOCUMENTS})
    assert wrong_model.status_code == 404 and "tiny-reranker" in wrong_model.json()["error"]["message"]


def test_many_pairs_are_batched_across_batches(client: TestClient, backend: RecordingBackend, reference: Any) -> None:
    rng = np.random.default_rng(0)
    documents = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))) for _ in range(40)]
    ranks = client.post("/rerank", json={"query": QUERY, "texts": documents}).json()
    scores = expected(reference, documents)
    assert {rank["index"]: rank["score"] for rank in ranks} == pytest.approx(dict(enumerate(scores.tolist())), abs=1e-5)
    assert len(backend.batches) >= 10 and max(backend.batches) <= 4  # batch_size 4, 160 padded tokens at most


def test_a_long_document_is_truncated_as_cross_encoder_truncates(client: TestClient, reference: Any) -> None:
    long_document = " ".join(f"w{n % 64}" for n in range(120))
    long_query = " ".join(WORDS[:30])
    for query in (QUERY, long_query):  # the document alone too long; both together too long
        ranks = client.post("/rerank", json={"query": query, "texts": [long_document, "gpu"]}).json()
        scores = expected(reference, [long_document, "gpu"], query=query)
        assert {rank["index"]: rank["score"] for rank in ranks} == pytest.approx(dict(enumerate(scores.tolist())))
    refused = client.post("/rerank", json={"query": QUERY, "texts": ["gpu", long_document], "truncate": False})
    assert refused.status_code == 422 and refused.json()["error_type"] == "Validation"
    assert "document 1" in refused.json()["error"] and f"limit of {LIMIT}" in refused.json()["error"]
    refused_v1 = client.post("/v1/rerank", json={"query": QUERY, "documents": [long_document], "truncate": False})
    assert refused_v1.status_code == 422 and refused_v1.json()["error"]["type"] == "invalid_request_error"


def test_left_truncation_keeps_the_ends(client: TestClient, reference: Any) -> None:
    long_document = " ".join(f"w{n % 64}" for n in range(120))
    ranks = client.post("/rerank", json={"query": QUERY, "texts": [long_document], "truncation_direction": "Left"})
    reference.tokenizer.truncation_side = "left"
    try:
        score = expected(reference, [long_document])[0]
    finally:
        reference.tokenizer.truncation_side = "right"
    assert ranks.json()[0]["score"] == pytest.approx(float(score), abs=1e-5)


def test_bad_requests(client: TestClient, folder: Path, backend: RecordingBackend) -> None:
    empty = client.post("/rerank", json={"query": QUERY, "texts": []})
    assert empty.status_code == 400 and empty.json()["error_type"] == "Empty"
    assert client.post("/v1/rerank", json={"query": QUERY, "documents": []}).json()["error"]["code"] == "Empty"
    unknown = client.post("/v1/rerank", json={"query": QUERY, "documents": ["a"], "rank_fields": ["text"]})
    assert unknown.status_code == 422 and "rank_fields: unknown field" in unknown.json()["error"]["message"]
    not_text = client.post("/v1/rerank", json={"query": QUERY, "documents": [{"title": "a"}]})
    assert not_text.status_code == 422
    with TestClient(build_app(reranker(folder, backend, max_inputs_per_request=3))) as small:
        too_many = small.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS})
        assert too_many.status_code == 422 and "limit of 3" in too_many.json()["error"]


def test_the_other_task_routes_answer_400_naming_the_task(
    client: TestClient, minilm_folder: Path, reference: Any
) -> None:
    for path, body in (
        ("/v1/embeddings", {"input": "a"}),
        ("/embeddings", {"input": "a"}),
        ("/embed", {"inputs": "a"}),
    ):
        answer = client.post(path, json=body)
        assert answer.status_code == 400, (path, answer.text)
        error = answer.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert "task: rerank" in message and "/v1/rerank" in message
    assert client.post("/embed", json={"inputs": "a"}).json()["error_type"] == "WrongTask"
    # TEI's default route does the instance's task: a reranker's "/" reranks.
    ranks = client.post("/", json={"query": QUERY, "texts": DOCUMENTS[:2]}).json()
    assert ranks[0]["score"] == pytest.approx(float(max(expected(reference, DOCUMENTS[:2]))), abs=1e-5)
    info = client.get("/info").json()
    assert info["task"] == "rerank" and info["max_input_length"] == LIMIT and info["model_id"] == "tiny-reranker"
    schema = client.get("/openapi.json").json()["paths"]
    assert {"/rerank", "/v1/rerank"} <= set(schema) and not {"/v1/embeddings", "/embed"} & set(schema)

    with TestClient(build_app(fake_service(minilm_folder, FakeBackend())), raise_server_exceptions=False) as embedder:
        tei = embedder.post("/rerank", json={"query": "q", "texts": ["a"]})
        assert tei.status_code == 400 and tei.json()["error_type"] == "WrongTask"
        assert "task: embed" in tei.json()["error"]
        v1 = embedder.post("/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert v1.status_code == 400 and v1.json()["error"]["code"] == "WrongTask"
        assert v1.json()["error"]["type"] == "invalid_request_error" and "task: embed" in v1.json()["error"]["message"]
        assert "/rerank" not in embedder.get("/openapi.json").json()["paths"]
        assert embedder.get("/info").json()["task"] == "embed"


def test_the_activation_named_by_the_folder_is_used(tmp_path: Path) -> None:
    import json

    from sentence_transformers import CrossEncoder

    folder = build_tiny_cross_encoder(tmp_path / "identity")
    config = json.loads((folder / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (folder / "config.json").write_text(json.dumps(config))
    backend = RecordingBackend(folder)
    with TestClient(build_app(reranker(folder, backend))) as client:
        ranks = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS}).json()
    logits = CrossEncoder(str(folder), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    assert min(logits) < 0 or max(logits) > 1  # really not a sigmoid
    assert {rank["index"]: rank["score"] for rank in ranks} == pytest.approx(dict(enumerate(logits.tolist())), abs=1e-5)


def test_folders_that_are_not_one_label_cross_encoders_are_refused(tmp_path: Path, minilm_folder: Path) -> None:
    import json

    from workers.rerank_card import NotACrossEncoder

    with pytest.raises(NotACrossEncoder, match="task: embed"):
        read_rerank_card(minilm_folder)
    folder = build_tiny_cross_encoder(tmp_path / "two-labels")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "no", "1": "yes"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotACrossEncoder, match="2 output labels"):
        read_rerank_card(folder)


@pytest.fixture
def restored_cpu_state() -> Iterator[None]:
    import torch

    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    yield
    os.sched_setaffinity(0, affinity)
    torch.set_num_threads(threads)


async def test_a_reranker_config_builds_a_rerank_service(
    folder: Path, reference: Any, restored_cpu_state: None
) -> None:
    """model.task reaches the replica through its spec, and assembly builds the reranker from the folder alone."""
    from orchestrator.config import parse_config
    from orchestrator.contracts.replica_spec import ReplicaSpec
    from orchestrator.hardware.topology import CpuTopology, Topology
    from orchestrator.planning.planner import plan
    from workers.assembly import build_instance

    config = parse_config({"model": {"path": str(folder), "task": "rerank"}, "mig_instances": [{"name": "one"}]})
    placement = plan(config, Topology(cpu=CpuTopology(cores=(0,))))
    assert placement.instances[0].backend == "torch"  # auto means torch for a reranker
    spec = ReplicaSpec.from_config(
        placement,
        None,
        {"model": config.model, "server": config.server},
        model_folder=str(folder),
        model_name="tiny-reranker",
        api_key_sha256=None,
        lane_token=None,
    )
    assert spec.task == "rerank"
    service = build_instance(spec, placement.instances[0]).service
    try:
        assert isinstance(service, RerankService) and service.info.task == "rerank"
        result = await service.rerank(QUERY, DOCUMENTS)
        assert result.scores == pytest.approx(expected(reference, DOCUMENTS), abs=1e-5)
    finally:
        await service.batcher.close()
