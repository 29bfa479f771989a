"""Pooling of token states into one vector per text (torch)."""

from __future__ import annotations

import torch


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool ``hidden`` (batch, tokens, dim) under ``attention_mask`` (batch, tokens) into (batch, dim).

    ``mean`` averages the real tokens (in float32, the result too), ``cls`` takes the first token, ``lasttoken``
    takes each row's last real token (this works for left and right padding alike). Raises ValueError for an
    unknown method.
    """
    if method == "mean":
        # Summed in float32 whatever the model's dtype: in float16 a few thousand tokens of a large activation pass
        # 65504 and the vector becomes inf (gpu-audit W8); bfloat16 would lose the small ones.
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        return (hidden.to(torch.float32) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if method == "cls":
        return hidden[:, 0]
    if method == "lasttoken":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {method!r} (use mean, cls or lasttoken)")
