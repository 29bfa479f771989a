"""Pooling of token states into one vector per text: the one implementation, for numpy arrays and torch tensors.

The torch backend pools on the device where the states are (moving batch x tokens x dim states to the host would
cost more than the pooling); the ONNX backend pools ONNX Runtime's numpy output without importing torch. Both run
this code: it uses only operations that numpy and torch spell alike, and converts to float32 the one way each does.
"""

from __future__ import annotations

from typing import Any, TypeVar

Array = TypeVar("Array", bound=Any)  # a numpy.ndarray or a torch.Tensor; the result is of the same kind
METHODS = ("mean", "cls", "lasttoken")


def pool(hidden: Array, attention_mask: Array, method: str) -> Array:
    """Pool ``hidden`` (batch, tokens, dim) under ``attention_mask`` (batch, tokens) into (batch, dim).

    ``mean`` averages the real tokens (in float32, the result too), ``cls`` takes the first token, ``lasttoken``
    takes each row's last real token (this works for left and right padding alike). Raises ValueError for an
    unknown method.
    """
    if method == "mean":
        # Summed in float32 whatever the model's dtype: in float16 a few thousand tokens of a large activation pass
        # 65504 and the vector becomes inf (gpu-audit W8); bfloat16 would lose the small ones.
        weights = _float32(attention_mask)[..., None]
        return (_float32(hidden) * weights).sum(1) / weights.sum(1).clip(min=1e-9)
    if method == "cls":
        return hidden[:, 0]
    if method == "lasttoken":
        # The running count of real tokens peaks first at each row's last real one (padding after it is masked).
        last = (attention_mask.cumsum(1) * attention_mask).argmax(1)
        return hidden[list(range(hidden.shape[0])), last]
    raise ValueError(f"unknown pooling {method!r} (use {', '.join(METHODS)})")


def _float32(array: Array) -> Array:
    """``array`` in float32, without a copy when it already is (numpy spells it ``astype``, torch ``float``)."""
    if hasattr(array, "astype"):
        return array.astype("float32", copy=False)
    return array.float()
