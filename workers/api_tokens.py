"""TEI's tokenizer and similarity routes for an embedding model: ``POST /tokenize``, ``POST /decode`` and
``POST /similarity``, in TEI's shapes (request and answer), with ``model`` as an optional extension (the front door
routes by it).

* ``/tokenize``: ``{"inputs": text | [texts], "add_special_tokens": true, "prompt_name": null}`` ->
  ``[[{"id", "text", "special", "start", "stop"}, ...], ...]`` (character offsets into the input; a special token has
  no offsets).
* ``/decode``: ``{"ids": [ids] | [[ids], ...], "skip_special_tokens": true}`` -> ``["text", ...]``.
* ``/similarity``: ``{"inputs": {"source_sentence", "sentences"}, "parameters": {"truncate", "truncation_direction",
  "prompt_name"}}`` -> cosine similarity of each sentence to the source, in order (vectors normalised as on
  ``/embed``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr]
    add_special_tokens: bool = True
    prompt_name: StrictStr | None = None
    model: StrictStr | None = Field(None, description="Extension: the served model (name or alias) to tokenise for.")


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[StrictInt, Field(ge=0)]] | list[list[Annotated[StrictInt, Field(ge=0)]]]
    skip_special_tokens: bool = True
    model: StrictStr | None = Field(None, description="Extension: the served model (name or alias) to decode for.")


class SimilarityInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_sentence: StrictStr
    sentences: list[StrictStr]


class SimilarityParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    truncate: bool | None = None
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"
    prompt_name: StrictStr | None = None


class SimilarityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None
    model: StrictStr | None = Field(None, description="Extension: the served model (name or alias) to compare with.")


def cosine_to_first(vectors: list[list[float]] | object) -> list[float]:
    """Cosine similarity of rows 1.. to row 0 of unit-length vectors (their dot products)."""
    import numpy as np

    matrix = np.asarray(vectors, dtype=np.float32)
    return [float(score) for score in matrix[1:] @ matrix[0]]
