"""Pooling of token states into one vector per text (torch)."""

from __future__ import annotations

import torch


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool ``hidden`` (batch, tokens, dim) under ``attention_mask`` (batch, tokens) into (batch, dim).

    ``mean`` averages the real tokens, ``cls`` takes the first token, ``lasttoken`` takes each row's last real token
    (this works for left and right padding alike). Raises ValueError for an unknown method.
    """
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if method == "cls":
        return hidden[:, 0]
    if method == "lasttoken":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {method!r} (use mean, cls or lasttoken)")
