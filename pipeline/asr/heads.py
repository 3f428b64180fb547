"""Output heads (SPEC §8-9): CTC projection, and the RNN-T prediction network plus joint."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CTCHead(nn.Module):
    def __init__(self, feat_in: int, num_classes: int, **_ignored: object) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.decoder_layers = nn.Sequential(nn.Conv1d(feat_in, num_classes, kernel_size=1))

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        """`[B, D, T']` -> log-probs `[B, T', C]`."""
        return F.log_softmax(self.decoder_layers(encoded).transpose(1, 2), dim=-1)


class RNNTDecoder(nn.Module):
    """Prediction network: embedding (blank row zero) and LSTM."""

    def __init__(self, pred_hidden: int, pred_rnn_layers: int, num_classes: int, **_ignored: object) -> None:
        super().__init__()
        self.blank_id = num_classes - 1
        self.pred_hidden = pred_hidden
        self.pred_rnn_layers = pred_rnn_layers
        self.embed = nn.Embedding(num_classes, pred_hidden, padding_idx=self.blank_id)
        self.lstm = nn.LSTM(pred_hidden, pred_hidden, pred_rnn_layers)

    def initial(self, batch: int, device: torch.device) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Output and state after the start step: zero input vector, zero state (Quirk Q7)."""
        zeros = torch.zeros(1, batch, self.pred_hidden, device=device)
        state = (
            torch.zeros(self.pred_rnn_layers, batch, self.pred_hidden, device=device),
            torch.zeros(self.pred_rnn_layers, batch, self.pred_hidden, device=device),
        )
        out, state = self.lstm(zeros, state)
        return out[0], state

    def step(
        self, labels: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One prediction step; state is `([layers, B, P], [layers, B, P])`."""
        x = self.embed(labels)
        if self.pred_rnn_layers == 1:  # the fused cell: far less per-call overhead than nn.LSTM
            lstm = self.lstm
            h, c = torch.lstm_cell(
                x, (state[0][0], state[1][0]), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
            )
            return h, (h[None], c[None])
        out, state = self.lstm(x[None], state)
        return out[0], state


class RNNTJoint(nn.Module):
    def __init__(
        self, enc_hidden: int, pred_hidden: int, joint_hidden: int, num_classes: int, **_ignored: object
    ) -> None:
        super().__init__()
        self.pred = nn.Linear(pred_hidden, joint_hidden)
        self.enc = nn.Linear(enc_hidden, joint_hidden)
        self.joint_net = nn.Sequential(nn.ReLU(), nn.Linear(joint_hidden, num_classes))

    def logits(self, enc_proj: torch.Tensor, pred_proj: torch.Tensor) -> torch.Tensor:
        """Both inputs already projected; the encoder projection is computed once per utterance."""
        return self.joint_net(enc_proj + pred_proj)


class RNNTHead(nn.Module):
    def __init__(self, decoder: dict, joint: dict, **_ignored: object) -> None:
        super().__init__()
        self.decoder = RNNTDecoder(**decoder)
        self.joint = RNNTJoint(**joint)
        self.num_classes = joint["num_classes"]
