"""Greedy decoding (SPEC §8-9): CTC collapse, and RNN-T vectorised over the batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipeline.asr.heads import RNNTHead


@dataclass
class Hypothesis:
    token_ids: list[int] = field(default_factory=list)
    token_frames: list[int] = field(default_factory=list)


def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor, blank_id: int) -> list[Hypothesis]:
    """Emit a label at the first frame of each run of equal non-blank argmaxes."""
    labels = log_probs.argmax(dim=-1)  # [B, T']
    prev = torch.nn.functional.pad(labels[:, :-1], (1, 0), value=-1)
    frames = torch.arange(labels.shape[1], device=labels.device)
    emit = (labels != blank_id) & (labels != prev) & (frames[None, :] < lengths[:, None])
    labels, emit = labels.cpu(), emit.cpu()
    hyps = []
    for b in range(labels.shape[0]):
        idx = emit[b].nonzero().flatten()
        hyps.append(Hypothesis(labels[b, idx].tolist(), idx.tolist()))
    return hyps


@torch.inference_mode()
def rnnt_greedy(
    head: RNNTHead,
    encoded: torch.Tensor,
    lengths: torch.Tensor,
    max_symbols: int = 10,
) -> list[Hypothesis]:
    """Batched greedy RNN-T: one joint evaluation per step for every unfinished item at once.

    Each item keeps its own frame pointer; the prediction network advances only for items that
    emitted, and an item leaves its frame on blank or after `max_symbols` emissions (Quirk Q6).
    """
    device = encoded.device
    batch = encoded.shape[0]
    blank = head.decoder.blank_id
    enc = head.joint.enc(encoded.transpose(1, 2).float())  # [B, T', J], projected once
    lengths = lengths.to(device)
    g, state = head.decoder.initial(batch, device)
    pred = head.joint.pred(g)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    emitted_here = torch.zeros(batch, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    last_t = (lengths - 1).clamp(min=0)
    steps_ids: list[torch.Tensor] = []
    steps_frames: list[torch.Tensor] = []
    steps_emit: list[torch.Tensor] = []
    active = lengths > 0
    while bool(active.any()):
        frame = enc[rows, torch.minimum(t, last_t)]
        k = head.joint.logits(frame, pred).argmax(dim=-1)
        emit = active & (k != blank)
        steps_ids.append(k)
        steps_frames.append(t.clone())
        steps_emit.append(emit)
        if bool(emit.any()):
            g_new, (h_new, c_new) = head.decoder.step(torch.where(emit, k, blank), state)
            sel = emit[:, None]
            g = torch.where(sel, g_new, g)
            state = (torch.where(sel[None], h_new, state[0]), torch.where(sel[None], c_new, state[1]))
            pred = torch.where(sel, head.joint.pred(g_new), pred)
        emitted_here = torch.where(emit, emitted_here + 1, emitted_here)
        advance = active & (~emit | (emitted_here >= max_symbols))
        t = torch.where(advance, t + 1, t)
        emitted_here = torch.where(advance, torch.zeros_like(emitted_here), emitted_here)
        active = t < lengths
    if not steps_ids:
        return [Hypothesis() for _ in range(batch)]
    ids = torch.stack(steps_ids, 1).cpu()
    frames = torch.stack(steps_frames, 1).cpu()
    emits = torch.stack(steps_emit, 1).cpu()
    hyps = []
    for b in range(batch):
        sel = emits[b]
        hyps.append(Hypothesis(ids[b, sel].tolist(), frames[b, sel].tolist()))
    return hyps
