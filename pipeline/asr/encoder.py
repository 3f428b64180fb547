"""Conformer encoder with GigaAM's rotary attention (SPEC §6-7).

Pointwise convolutions are stored as `[out, in, 1]` Conv1d weights in the checkpoints but run here as
`nn.Linear` on `[B, T, D]` tensors: no transposes around them, and int8 dynamic quantisation can
reach them. `_squeeze_pointwise` adapts the stored shapes at load time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.asr.subsampling import Subsampling


def rotary_tables(d_k: int, max_len: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos/sin `[max_len, d_k]`, angles duplicated across the two halves (SPEC §6)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, d_k, 2, dtype=torch.float32) / d_k))
    positions = torch.arange(max_len, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weights' or input's dtype (as under autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.silu(self.linear1(x)))


class RotaryAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)

    def forward(
        self, u: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, t, d = u.shape
        h, dk = self.n_heads, self.d_k
        # Rotation acts on the attention input, per head chunk, before the q/k projections (Quirk Q1).
        uh = u.view(b, t, h, dk)
        half = dk // 2
        rotated = torch.cat((-uh[..., half:], uh[..., :half]), dim=-1)
        ur = (uh * cos[:t, None, :] + rotated * sin[:t, None, :]).view(b, t, d)
        q = self.linear_q(ur).view(b, t, h, dk).transpose(1, 2)
        k = self.linear_k(ur).view(b, t, h, dk).transpose(1, 2)
        v = self.linear_v(u).view(b, t, h, dk).transpose(1, 2)
        # Only keys are masked: padded query rows then hold finite junk, which never reaches valid
        # frames (SPEC L1), and no row is fully masked (no NaN).
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, d))


class ConvModule(nn.Module):
    def __init__(self, d_model: int, kernel_size: int, norm: str) -> None:
        super().__init__()
        self.pointwise_conv1 = nn.Linear(d_model, 2 * d_model)
        self.depthwise_conv = nn.Conv1d(
            d_model, d_model, kernel_size, padding=(kernel_size - 1) // 2, groups=d_model
        )
        if norm == "layer_norm":
            self.batch_norm: nn.Module = LayerNorm32(d_model)  # the checkpoint's name, a LayerNorm in v3
        elif norm == "batch_norm":
            self.batch_norm = nn.BatchNorm1d(d_model)
        else:
            raise ValueError(f"unknown conv_norm_type {norm!r}")
        self.pointwise_conv2 = nn.Linear(d_model, d_model)

    def forward(self, u: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        x = F.glu(self.pointwise_conv1(u), dim=-1)
        if pad_mask is not None:
            x = x.masked_fill(pad_mask[..., None], 0.0)
        x = self.depthwise_conv(x.transpose(1, 2).to(self.depthwise_conv.weight.dtype))
        if isinstance(self.batch_norm, nn.BatchNorm1d):
            x = self.batch_norm(x.to(self.batch_norm.weight.dtype)).transpose(1, 2)
        else:
            x = self.batch_norm(x.transpose(1, 2))
        return self.pointwise_conv2(F.silu(x))


class ConformerLayer(nn.Module):
    def __init__(self, d_model: int, d_ff: int, n_heads: int, kernel_size: int, conv_norm: str) -> None:
        super().__init__()
        self.norm_feed_forward1 = LayerNorm32(d_model)
        self.feed_forward1 = FeedForward(d_model, d_ff)
        self.norm_self_att = LayerNorm32(d_model)
        self.self_attn = RotaryAttention(d_model, n_heads)
        self.norm_conv = LayerNorm32(d_model)
        self.conv = ConvModule(d_model, kernel_size, conv_norm)
        self.norm_feed_forward2 = LayerNorm32(d_model)
        self.feed_forward2 = FeedForward(d_model, d_ff)
        self.norm_out = LayerNorm32(d_model)

    def forward(
        self,
        r: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor | None,
        pad_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        r = r + 0.5 * self.feed_forward1(self.norm_feed_forward1(r))
        r = r + self.self_attn(self.norm_self_att(r), cos, sin, key_mask)
        r = r + self.conv(self.norm_conv(r), pad_mask)
        r = r + 0.5 * self.feed_forward2(self.norm_feed_forward2(r))
        return self.norm_out(r)


class ConformerEncoder(nn.Module):
    def __init__(
        self,
        feat_in: int = 64,
        n_layers: int = 16,
        d_model: int = 768,
        subsampling: str = "conv2d",
        subs_kernel_size: int = 3,
        subsampling_factor: int = 4,
        ff_expansion_factor: int = 4,
        self_attention_model: str = "rotary",
        pos_emb_max_len: int = 5000,
        n_heads: int = 16,
        conv_kernel_size: int = 31,
        flash_attn: bool = False,  # same math; SDPA picks the fused kernel itself
        conv_norm_type: str = "batch_norm",
        **_ignored: object,
    ) -> None:
        super().__init__()
        if self_attention_model != "rotary":
            raise ValueError(f"self_attention_model {self_attention_model!r} is not supported (rotary only)")
        self.d_model = d_model
        self.max_len = pos_emb_max_len
        self.pre_encode = Subsampling(subsampling, feat_in, d_model, subs_kernel_size, subsampling_factor)
        self.layers = nn.ModuleList(
            ConformerLayer(d_model, d_model * ff_expansion_factor, n_heads, conv_kernel_size, conv_norm_type)
            for _ in range(n_layers)
        )
        cos, sin = rotary_tables(d_model // n_heads, pos_emb_max_len, float(pos_emb_max_len))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._register_load_state_dict_pre_hook(_squeeze_pointwise)

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor, collect: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, F, T]` -> `([B, D, T'], lengths')`. `collect` receives each stage's output (for tests)."""
        x, lengths = self.pre_encode(feats, lengths)
        t = x.shape[1]
        if t > self.max_len:
            raise ValueError(f"input of {t} encoder frames exceeds the rotary table ({self.max_len})")
        if collect is not None:
            collect.append(x)
        key_mask = pad_mask = None
        if x.shape[0] > 1:  # a single item is never masked (Quirk Q4)
            key_mask = torch.arange(t, device=x.device)[None, :] < lengths[:, None]
            pad_mask = ~key_mask
        cos, sin = self.rope_cos, self.rope_sin
        for layer in self.layers:
            x = layer(x, cos, sin, key_mask, pad_mask)
            if collect is not None:
                collect.append(x)
        return x.transpose(1, 2), lengths


def _squeeze_pointwise(state_dict, prefix, *_args) -> None:  # noqa: ANN001 - torch hook signature
    for key in list(state_dict):
        if key.startswith(prefix) and ".pointwise_conv" in key and key.endswith(".weight"):
            w = state_dict[key]
            if w.dim() == 3:
                state_dict[key] = w.squeeze(-1)
