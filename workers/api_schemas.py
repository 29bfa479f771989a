"""The request bodies of the embedding routes, as their APIs define them (OpenAI's and TEI's), validated strictly:
unknown fields and wrong types are refused, never coerced."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's embeddings request (``input`` may be text, texts, or, when accepted, token ids or lists of them)."""

    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[StrictInt, Field(gt=0)] | None = None
    user: StrictStr | None = None
    prompt_name: StrictStr | None = Field(
        None, description="Extension: a named prompt of the model (e.g. 'query' for Qwen3-Embedding)."
    )
    truncate: bool | None = Field(
        None,
        description="Extension (TEI's): cut inputs over the model's limit (true) or refuse them (false); "
        "default: the server's auto_truncate.",
    )


class TEIEmbedRequest(BaseModel):
    """TEI's ``/embed`` request."""

    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr]
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"
    prompt_name: StrictStr | None = None
    dimensions: Annotated[StrictInt, Field(gt=0)] | None = None
    model: StrictStr | None = Field(None, description="Extension: the served model (name or alias) to embed with.")
