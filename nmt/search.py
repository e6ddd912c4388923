"""Beam search as fairseq's ``SequenceGenerator`` does it, batched over sentences.

Each sentence keeps ``beam`` hypotheses, all starting from ``</s>``. At step t every
hypothesis proposes its continuations; among all of them the ``2 × beam`` best cumulative
log-probabilities are the candidates (at step 0 only the first hypothesis proposes, since all
are equal). A candidate ending in ``</s>`` among the first ``beam`` finishes: its score is the
summed log-probability divided by (its length including ``</s>``) ** ``lenpen``. The first
``beam`` candidates that do not end in ``</s>`` continue. A sentence is done when it has
``beam`` finished hypotheses or reaches ``max_len = min(int(a · src_len + b),
max_positions - 1)`` tokens (``src_len`` counts the source's ``</s>``), where ``</s>`` is
forced, so a hypothesis holds at most ``max_len`` tokens before its ``</s>``. ``<pad>`` is
never produced and ``</s>`` not before ``min_len`` tokens. Unlike fairseq, which takes the
padded length of the whole batch as ``src_len``, each sentence uses its own, so a translation
does not depend on what it was batched with.

The model is anything with ``encode(src_tokens) -> enc`` (``enc.select(index)``),
``new_cache()``, ``decode_step(tokens, enc, cache) -> (N, V) float log-probabilities`` for the
next token after each row of ``tokens``, and ``reorder_cache(cache, index)``; see
``nmt.model.Transformer``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Hypothesis:
    tokens: list[int]  # without the final </s>
    score: float  # length-normalised log-probability
    logprob: float  # summed log-probability, </s> included


@torch.no_grad()
def beam_search(
    model: Any,
    src_tokens: Tensor,
    *,
    pad: int,
    eos: int,
    beam: int,
    lenpen: float,
    max_len_a: float,
    max_len_b: int,
    max_positions: int,
    vocab_size: int,
    min_len: int = 1,
) -> list[list[Hypothesis]]:
    """For each row of ``src_tokens`` (right-padded, ``</s>``-terminated), its finished
    hypotheses, best first (at most ``beam``). A beam wider than ``vocab_size - 1`` is
    narrowed to it, as fairseq's ``SequenceGenerator`` does (``<pad>`` is never a candidate)."""
    beam = min(beam, vocab_size - 1)
    device = src_tokens.device
    bsz = src_tokens.size(0)
    src_lengths = src_tokens.ne(pad).sum(dim=1)
    max_len = [min(int(max_len_a * int(n) + max_len_b), max_positions - 1) for n in src_lengths]
    enc = model.encode(src_tokens).select(torch.arange(bsz, device=device).repeat_interleave(beam))
    cache = model.new_cache()
    longest = max(max_len, default=0)
    tokens = torch.full((bsz * beam, longest + 2), pad, dtype=torch.long, device=device)
    tokens[:, 0] = eos
    scores = torch.zeros(bsz * beam, longest + 1, dtype=torch.float, device=device)
    finalized: list[list[Hypothesis]] = [[] for _ in range(bsz)]
    active = list(range(bsz))  # original ids of the sentences still searched, in row order

    for step in range(longest + 1):
        lprobs = model.decode_step(tokens[:, : step + 1], enc, cache).float()
        vocab = lprobs.size(1)
        lprobs[:, pad] = -math.inf
        limit = torch.tensor([max_len[s] for s in active], device=device).repeat_interleave(beam)
        at_limit = step >= limit
        if at_limit.any():  # force </s>
            eos_lp = lprobs[at_limit, eos]
            lprobs[at_limit] = -math.inf
            lprobs[at_limit, eos] = eos_lp
        if step < min_len:
            lprobs[:, eos] = -math.inf
        n = len(active)
        lp = lprobs.view(n, beam, vocab)
        if step == 0:
            lp = lp[:, :1, :]
        else:
            lp = lp + scores[:, step - 1].view(n, beam, 1)
        flat = lp.reshape(n, -1)
        cand_scores, cand = torch.topk(flat, k=min(2 * beam, flat.size(1) - 1), dim=1)
        cand_beams, cand_tokens = cand // vocab, cand % vocab
        cand_rows = cand_beams + torch.arange(n, device=device)[:, None] * beam
        is_eos = cand_tokens.eq(eos) & cand_scores.ne(-math.inf)

        done = set()
        for j, c in is_eos[:, :beam].nonzero().tolist():  # finish hypotheses
            sent = active[j]
            if len(finalized[sent]) < beam:
                row = int(cand_rows[j, c])
                logprob = float(cand_scores[j, c])
                finalized[sent].append(
                    Hypothesis(
                        tokens[row, 1 : step + 1].tolist(), logprob / (step + 1) ** lenpen, logprob
                    )
                )
            if len(finalized[sent]) == beam or step == max_len[sent]:
                done.add(j)
        keep = [j for j in range(n) if j not in done]
        if not keep:
            break
        keep_t = torch.tensor(keep, device=device)
        # The first `beam` candidates that do not end in </s>, in order of score.
        order = is_eos[keep_t].long() * cand.size(1) + torch.arange(cand.size(1), device=device)
        chosen = torch.topk(order, k=beam, dim=1, largest=False).indices
        rows = torch.gather(cand_rows[keep_t], 1, chosen).view(-1)
        tokens = tokens[rows]
        tokens[:, step + 1] = torch.gather(cand_tokens[keep_t], 1, chosen).view(-1)
        scores = scores[rows]
        scores[:, step] = torch.gather(cand_scores[keep_t], 1, chosen).view(-1)
        model.reorder_cache(cache, rows)
        enc = enc.select(rows)
        active = [active[j] for j in keep]

    return [sorted(hyps, key=lambda h: -h.score) for hyps in finalized]


GENERATION_KEYS = ("beam", "lenpen", "max_len_a", "max_len_b")


def generation_options(config: dict, name: str) -> dict[str, Any]:
    """The decoding settings ``name`` of a run config's ``generations`` section."""
    presets = config["generations"]
    if name not in presets:
        raise ValueError(
            f"{config['config']}: unknown generation {name!r}; generations: {', '.join(presets)}"
        )
    options = dict(presets[name]) if isinstance(presets[name], dict) else {}
    wrong = sorted(set(options) ^ set(GENERATION_KEYS))
    if wrong:
        raise ValueError(
            f"{config['config']}: generations.{name} keys must be {', '.join(GENERATION_KEYS)}; "
            f"unknown or missing: {', '.join(wrong)}"
        )
    for key, ok, want in _GENERATION_CHECKS:
        if not ok(options[key]):
            raise ValueError(
                f"{config['config']}: generations.{name}.{key} must be {want}, got {options[key]!r}"
            )
    return options


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


_GENERATION_CHECKS = (
    ("beam", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("lenpen", _is_number, "a number"),
    ("max_len_a", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    ("max_len_b", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
)


@torch.no_grad()
def translate(
    model: Any,
    split: Any,
    indices: list[int],
    options: dict[str, Any],
    *,
    batch_size: int,
    autocast: Any,
) -> list[list[int]]:
    """The best hypothesis for each sentence ``indices`` of ``split`` (an ``nmt.data.Split``),
    in that order. Sentences are decoded longest first in batches of ``batch_size``;
    ``autocast`` is a context factory (``lambda: engine.amp.autocast(device, amp)``)."""
    device = next(model.parameters()).device
    d = split.dictionary
    order = sorted(range(len(indices)), key=lambda i: -int(split.src_sizes[indices[i]]))
    out: list[list[int]] = [[] for _ in indices]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = split.collate([indices[i] for i in chunk])
        with autocast():
            hyps = beam_search(
                model,
                batch.src_tokens.to(device),
                pad=d.pad,
                eos=d.eos,
                max_positions=model.max_positions,
                vocab_size=len(d),
                **options,
            )
        for i, best in zip(chunk, hyps, strict=True):
            out[i] = best[0].tokens if best else []
    return out
