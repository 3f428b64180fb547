"""Pre-encoder subsampling by 4 (SPEC §5): conv1d (v3) or conv2d (v2), with length masking."""

from __future__ import annotations

import torch
from torch import nn


def _halve(lengths: torch.Tensor) -> torch.Tensor:
    return torch.div(lengths - 1, 2, rounding_mode="floor") + 1


def _mask_time(x: torch.Tensor, lengths: torch.Tensor, time_dim: int) -> torch.Tensor:
    t = torch.arange(x.shape[time_dim], device=x.device)
    keep = t[None, :] < lengths[:, None]  # [B, T]
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[time_dim] = x.shape[time_dim]
    return x * keep.view(shape).to(x.dtype)


class Subsampling(nn.Module):
    def __init__(self, kind: str, feat_in: int, d_model: int, kernel_size: int, factor: int) -> None:
        super().__init__()
        if factor != 4:
            raise ValueError(f"subsampling_factor {factor} is not supported (GigaAM uses 4)")
        self.kind = kind
        pad = (kernel_size - 1) // 2
        if kind == "conv1d":
            self.conv = nn.Sequential(
                nn.Conv1d(feat_in, d_model, kernel_size, stride=2, padding=pad),
                nn.ReLU(),
                nn.Conv1d(d_model, d_model, kernel_size, stride=2, padding=pad),
                nn.ReLU(),
            )
        elif kind == "conv2d":
            self.conv = nn.Sequential(
                nn.Conv2d(1, d_model, kernel_size, stride=2, padding=pad),
                nn.ReLU(),
                nn.Conv2d(d_model, d_model, kernel_size, stride=2, padding=pad),
                nn.ReLU(),
            )
            freq = feat_in
            for _ in range(2):
                freq = (freq + 2 * pad - kernel_size) // 2 + 1
            self.out = nn.Linear(d_model * freq, d_model)
        else:
            raise ValueError(f"unknown subsampling {kind!r}")

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, F, T]` -> `[B, T', D]`; padded frames are zeroed after each conv so they never leak."""
        conv0, conv1 = self.conv[0], self.conv[2]
        if self.kind == "conv1d":
            x = _mask_time(feats, lengths, 2)
            x = conv0(x)
            lengths = _halve(lengths)
            x = torch.relu(_mask_time(x, lengths, 2))
            x = conv1(x)
            lengths = _halve(lengths)
            x = torch.relu(_mask_time(x, lengths, 2))
            return x.transpose(1, 2), lengths
        x = _mask_time(feats.transpose(1, 2).unsqueeze(1), lengths, 2)  # [B, 1, T, F]
        x = conv0(x)
        lengths = _halve(lengths)
        x = torch.relu(_mask_time(x, lengths, 2))
        x = conv1(x)
        lengths = _halve(lengths)
        x = torch.relu(_mask_time(x, lengths, 2))  # [B, D, T', F']
        b, c, t, f = x.shape
        x = x.permute(0, 2, 1, 3).reshape(b, t, c * f)
        return self.out(x), lengths
