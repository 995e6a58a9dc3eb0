"""Pieces both the model and generation use, kept apart so that `generation` (which the
model's `generate` method calls) never imports `model` back: the KV cache buffer, the
raw-timestamp features, and the surface id of generated tokens."""
from __future__ import annotations

import math

import torch

GENERATED_SURFACE = 4  # surface id of tokens fed back during generation (1..3 are real surfaces)


KV = tuple[torch.Tensor, torch.Tensor]  # ([B, H, T, hd], [B, H, T, hd])


class KVBuffer:
    """One layer's preallocated KV cache ([B, H, capacity, hd] each) filled up to `length`.

    Decode steps write their keys/values in place instead of concatenating (torch.cat copies
    the whole cache every step: at B=1024, 256 tokens and 12 layers that is ~10 GB per step),
    and several generations from one prefill (one per arm) rewind `length` to the prefix."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, capacity: int):
        B, H, T, hd = k.shape
        # zeros, not empty: attention reads the whole buffer (masked), and 0 * NaN garbage is NaN
        self.k = k.new_zeros(B, H, capacity, hd)
        self.v = v.new_zeros(B, H, capacity, hd)
        self.length = 0
        self.append(k, v)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> KV:
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache full: {end} tokens > capacity {self.k.shape[2]}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


AGE_OFF = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # time_features' column 1 is the age


def time_features(ts_s: torch.Tensor, valid: torch.Tensor, now_s: torch.Tensor) -> torch.Tensor:
    """Raw-timestamp features after PinnerFormer: [B, T] seconds -> [B, T, 6].

    log gap to the previous token, log age relative to the newest history token, and the
    hour-of-day / day-of-week phase. Padding rows are zero."""
    ts = ts_s.to(torch.float64)
    prev = torch.cat([ts[:, :1], ts[:, :-1]], dim=1)
    prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1)
    # the first real token has no predecessor: padding must not leak in as a huge gap
    gap = torch.where(prev_valid, torch.log1p((ts - prev).clamp(min=0)) / 10, torch.zeros_like(ts))
    age = torch.log1p((now_s[:, None].to(torch.float64) - ts).clamp(min=0)) / 10
    day = 2 * math.pi * torch.remainder(ts, 86400) / 86400
    week = 2 * math.pi * torch.remainder(ts, 604800) / 604800
    f = torch.stack([gap, age, torch.sin(day), torch.cos(day), torch.sin(week), torch.cos(week)], -1)
    return (f * valid[..., None]).float()
