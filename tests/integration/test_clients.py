"""The clients people point at an embedding service, real and unmodified, against one real ``orchestrator up``.

Issue 18: LangChain's default OpenAIEmbeddings got silently wrong vectors (it sends tiktoken ids), long chunks could
not be embedded on ``/v1/embeddings``, ``huggingface_hub.InferenceClient(model=url)`` got 404 on ``POST /`` and
``client.models.list()`` had no ``/v1/models``. Each client's vectors are compared with sentence-transformers' for the
same texts, a chunk over the model's 256-token limit included (sentence-transformers truncates it silently; the
service does the same by default, ``server.auto_truncate``).

One service serves every test of the module (its start is most of the module's time); docs/clients.md shows the
same calls.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import free_port, one_pool_config, start_up

pytestmark = pytest.mark.integration

MODEL = "all-MiniLM-L6-v2"
# Over 256 tokens (about 330): the service must cut it where sentence-transformers does.
LONG_CHUNK = " ".join(f"Paragraph {n} explains how a MIG slice isolates memory and compute." for n in range(30))
TEXTS = ["what is MIG?", "Multi-Instance GPU splits one GPU into isolated slices.", LONG_CHUNK]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``orchestrator up`` with a default server section (one CPU pool), as a user starts it."""
    folder = tmp_path_factory.mktemp("clients")
    port = free_port()
    process = start_up(one_pool_config(folder / "config.yaml", port), folder / "up.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except Exception:
            process.kill()
            raise


@pytest.fixture(scope="module")
def expected(minilm_folder: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder), device="cpu").encode(TEXTS, normalize_embeddings=True)


def assert_same_vectors(got: Any, expected: np.ndarray) -> None:
    vectors = np.asarray(got, dtype=np.float32)
    assert vectors.shape == expected.shape
    cosines = np.sum(vectors * expected, axis=1) / np.linalg.norm(vectors, axis=1)
    assert np.all(cosines >= 0.9999), cosines


def test_openai_client(url: str, expected: np.ndarray) -> None:
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert [model.id for model in client.models.list()] == [MODEL]
    response = client.embeddings.create(model=MODEL, input=TEXTS)  # the client asks for base64 and decodes it
    assert_same_vectors([item.embedding for item in response.data], expected)
    assert response.usage.prompt_tokens > 256  # the long chunk counted as the 256 tokens embedded
    # The `truncate` extension through the client's extra body: refusing is asked for, and the advice followed.
    with pytest.raises(openai.UnprocessableEntityError, match="shorten it or set truncate to true"):
        client.embeddings.create(model=MODEL, input=LONG_CHUNK, extra_body={"truncate": False})
    cut = client.embeddings.create(model=MODEL, input=LONG_CHUNK, extra_body={"truncate": True})
    assert_same_vectors([cut.data[0].embedding], expected[2:])


def test_langchain_default_gets_a_clear_error_naming_the_option(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default LangChain sends tiktoken's ids of each text, which this service must not read as its own."""
    from importlib.util import find_spec

    import openai
    from langchain_openai import OpenAIEmbeddings

    # tiktoken downloads cl100k_base's file, and this machine, like CI's, reaches no such host: litellm ships that
    # file (found without importing litellm, whose import starts a download of its own), so LangChain computes here
    # the same ids it sends anywhere.
    litellm_folder = Path(find_spec("litellm").submodule_search_locations[0])  # type: ignore[union-attr,index]
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(litellm_folder / "litellm_core_utils" / "tokenizers"))
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        embeddings.embed_query(TEXTS[0])
    assert "check_embedding_ctx_length=False" in str(caught.value)
    assert "server.accept_token_ids" in str(caught.value)


def test_langchain_with_texts(url: str, expected: np.ndarray) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{url}/v1", api_key="unused", check_embedding_ctx_length=False)
    assert_same_vectors(embeddings.embed_documents(TEXTS), expected)
    assert_same_vectors([embeddings.embed_query(TEXTS[0])], expected[:1])


def test_litellm(url: str, expected: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of its price list at import
    import litellm

    response = litellm.embedding(model=f"openai/{MODEL}", api_base=f"{url}/v1", api_key="unused", input=TEXTS)
    assert_same_vectors([item["embedding"] for item in response.data], expected)


def test_llamaindex_openai_like(url: str, expected: np.ndarray) -> None:
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    embeddings = OpenAILikeEmbedding(model_name=MODEL, api_base=f"{url}/v1", api_key="unused")
    assert_same_vectors(embeddings.get_text_embedding_batch(TEXTS), expected)
    assert_same_vectors([embeddings.get_query_embedding(TEXTS[0])], expected[:1])


def test_huggingface_hub_inference_client(url: str, expected: np.ndarray) -> None:
    """As for TEI: the client POSTs ``{"inputs": ...}`` to the URL itself."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=url)
    vectors = [client.feature_extraction(text)[0] for text in TEXTS]
    assert_same_vectors(vectors, expected)
