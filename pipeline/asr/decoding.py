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
    window: int = 8,
) -> list[Hypothesis]:
    """Batched greedy RNN-T with look-ahead over blank frames; decisions equal the reference loop.

    The prediction output only changes on an emission, so the joint for the next `window` frames of
    every item is evaluated in one matrix product with the current prediction: the first non-blank
    frame is exactly where the frame-by-frame loop would emit next, and an all-blank window is
    skipped whole. A step therefore costs one batched joint plus, for items that emitted, one LSTM
    cell. An item leaves a frame after `max_symbols` emissions without checking blank (Quirk Q6).
    """
    device = encoded.device
    batch, _, frames = encoded.shape
    blank = head.decoder.blank_id
    joint = head.joint
    enc = joint.enc(encoded.transpose(1, 2).float())  # [B, T', J], projected once
    lengths = lengths.to(device)
    g, state = head.decoder.initial(batch, device)
    pred = joint.pred(g)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    at_frame = torch.zeros(batch, dtype=torch.long, device=device)
    offsets = torch.arange(window, device=device)
    rows = torch.arange(batch, device=device)[:, None]
    out_ids: list[torch.Tensor] = []
    out_frames: list[torch.Tensor] = []
    out_emit: list[torch.Tensor] = []
    active = lengths > 0
    while bool(active.any()):
        idx = t[:, None] + offsets  # [B, W]
        inside = idx < lengths[:, None]
        logits = joint.joint_net(enc[rows, idx.clamp(max=frames - 1)] + pred[:, None, :])
        labels = logits.argmax(dim=-1)  # [B, W]
        hit = inside & (labels != blank)
        first = torch.where(hit.any(dim=1), hit.to(torch.int8).argmax(dim=1), window)
        emit = active & (first < window)
        step = first.clamp(max=window - 1)
        label = labels.gather(1, step[:, None])[:, 0]
        frame = t + step
        out_ids.append(label)
        out_frames.append(frame)
        out_emit.append(emit)
        if bool(emit.any()):
            g_new, new_state = head.decoder.step(torch.where(emit, label, blank), state)
            sel = emit[:, None]
            state = tuple(torch.where(sel, new, old) for new, old in zip(new_state, state))
            pred = torch.where(sel, joint.pred(g_new), pred)
        at_frame = torch.where(emit, torch.where(first == 0, at_frame + 1, 1), at_frame)
        capped = emit & (at_frame >= max_symbols)
        t = torch.where(emit, frame, t + window)
        t = torch.where(capped, t + 1, t)
        at_frame = torch.where(capped | ~emit, 0, at_frame)
        active = t < lengths
    return _collect(out_ids, out_frames, out_emit, batch)


def _collect(ids: list[torch.Tensor], frames: list[torch.Tensor], emits: list[torch.Tensor], batch: int) -> list[Hypothesis]:
    if not ids:
        return [Hypothesis() for _ in range(batch)]
    all_ids = torch.stack(ids, 1).cpu()
    all_frames = torch.stack(frames, 1).cpu()
    all_emits = torch.stack(emits, 1).cpu()
    return [Hypothesis(all_ids[b, all_emits[b]].tolist(), all_frames[b, all_emits[b]].tolist()) for b in range(batch)]
