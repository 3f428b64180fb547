"""Log-mel features (SPEC §4). The window and filterbank come from the checkpoint's buffers."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


def hann_window(length: int) -> torch.Tensor:
    return torch.hann_window(length, periodic=True, dtype=torch.float32)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """HTK-scale triangles without area normalisation, `[n_freqs, n_mels]`: what the reference's
    torchaudio MelSpectrogram stores as `fb`. Only a starting value: checkpoints carry their own."""
    return torchaudio.functional.melscale_fbanks(
        n_freqs, 0.0, sample_rate / 2, n_mels, sample_rate, norm=None, mel_scale="htk"
    )


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int) -> None:
        super().__init__()
        self.register_buffer("window", hann_window(n_fft))


class _MelScale(nn.Module):
    def __init__(self, n_fft: int, n_mels: int, sample_rate: int) -> None:
        super().__init__()
        self.register_buffer("fb", mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate))


class _MelSpectrogram(nn.Module):
    """Holds the buffers under the checkpoint's key names (`featurizer.0.spectrogram.window`...)."""

    def __init__(self, n_fft: int, n_mels: int, sample_rate: int) -> None:
        super().__init__()
        self.spectrogram = _Spectrogram(n_fft)
        self.mel_scale = _MelScale(n_fft, n_mels, sample_rate)


class FeatureExtractor(nn.Module):
    def __init__(
        self,
        sample_rate: int,
        features: int,
        hop_length: int | None = None,
        win_length: int | None = None,
        n_fft: int | None = None,
        center: bool = True,
        **_ignored: object,  # mel_scale / mel_norm are ignored upstream too (Quirk Q9)
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.hop_length = hop_length or sample_rate // 100
        self.win_length = win_length or sample_rate // 40
        self.n_fft = n_fft or sample_rate // 40
        if self.win_length != self.n_fft:
            raise ValueError("win_length different from n_fft is not used by any GigaAM model")
        self.center = center
        self.n_mels = features
        self.featurizer = nn.ModuleList([_MelSpectrogram(self.n_fft, features, sample_rate)])

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        if self.center:
            return torch.div(lengths, self.hop_length, rounding_mode="floor") + 1
        return torch.div(lengths - self.n_fft, self.hop_length, rounding_mode="floor") + 1

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`wav [B, L]` float32 -> `([B, n_mels, T], lengths)`; frames past an item's length are junk."""
        mel = self.featurizer[0]
        spec = torch.stft(
            wav,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=mel.spectrogram.window,
            center=self.center,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spec.abs().pow(2.0)
        feats = torch.matmul(power.transpose(-1, -2), mel.mel_scale.fb).transpose(-1, -2)
        return torch.log(feats.clamp(1e-9, 1e9)), self.output_lengths(lengths)
