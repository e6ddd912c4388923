"""The paper's One Billion Words model: a 2-layer LSTM with an adaptive softmax.

Word embedding -> dropout -> LSTM (dropout between layers) -> dropout ->
``torch.nn.AdaptiveLogSoftmaxWithLoss`` (Grave et al., 2017). The sizes come from the table
(``configs/lm1b.yaml``: embedding 300, hidden 2048, 2 layers, dropout 0.1, cutoffs
[60000, 100000, 640000], div_value 4). Initialisation as in the paper's code: the embedding
kaiming-uniform, every LSTM matrix xavier-uniform, biases zero except a forget-gate bias of 1.

The hidden state is carried across BPTT windows by the training loop, detached between them
(truncated backpropagation through time).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

Hidden = tuple[torch.Tensor, torch.Tensor]


class _FullSoftmax(nn.Module):
    """What the adaptive softmax becomes with no cutoff below the vocabulary size: one head."""

    def __init__(self, in_features: int, n_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(in_features, n_classes)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor]:
        logp = torch.log_softmax(self.head(input).float(), dim=-1)
        return (logp.gather(1, target.unsqueeze(1)).squeeze(1),)

    def log_prob(self, input: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(input).float(), dim=-1)


def usable_cutoffs(cutoffs: Sequence[int], vocab_size: int) -> list[int]:
    """The cutoffs below ``vocab_size``; the others are dropped with a warning."""
    kept = [int(c) for c in cutoffs if c < vocab_size]
    if len(kept) < len(cutoffs):
        dropped = [c for c in cutoffs if c >= vocab_size]
        log.warning(
            "adaptive softmax: dropping cutoffs %s (at or beyond the vocabulary size %d)",
            dropped,
            vocab_size,
        )
    return kept


class LSTMLanguageModel(nn.Module):
    """``forward(inputs, targets, hidden) -> (nll_sum, count, hidden)``.

    ``targets`` of -1 (padding) are not predicted. Returning the summed negative
    log-likelihood and the number of predicted tokens lets ranks and windows be combined
    exactly: perplexity = exp(Σ nll / Σ count).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        embed_dim: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        cutoffs: Sequence[int],
        div_value: float,
    ) -> None:
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers, dropout=dropout, batch_first=True)
        kept = usable_cutoffs(cutoffs, vocab_size)
        if kept:
            self.softmax: nn.Module = nn.AdaptiveLogSoftmaxWithLoss(
                hidden_size, vocab_size, kept, div_value=div_value
            )
        else:
            self.softmax = _FullSoftmax(hidden_size, vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation (the softmax keeps torch's default Linear init)."""
        nn.init.kaiming_uniform_(self.embedding.weight)
        h = self.hidden_size
        for name, p in self.lstm.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)
                if name.startswith("bias_ih"):
                    # Gate order i, f, g, o: a forget bias of 1 keeps early gradients flowing.
                    nn.init.ones_(p[h : 2 * h])

    def init_hidden(self, batch_size: int, device: torch.device | str = "cpu") -> Hidden:
        shape = (self.num_layers, batch_size, self.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def features(self, inputs: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """LSTM outputs (batch, time, hidden) after dropout, and the new hidden state."""
        x = self.drop(self.embedding(inputs))
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # CPU autocast casts the LSTM's weights but not its input, and oneDNN (CPUs
            # without native bf16) has no LSTM for a float32 input with bf16 weights.
            x = x.to(torch.get_autocast_dtype(device))
        out, hidden = self.lstm(x, hidden)
        return self.drop(out), hidden

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor, hidden: Hidden
    ) -> tuple[torch.Tensor, torch.Tensor, Hidden]:
        out, hidden = self.features(inputs, hidden)
        mask = targets >= 0
        # The adaptive softmax runs in float32 outside autocast: it fills a buffer of its
        # input's dtype with log-probabilities whose dtype depends on the device's autocast
        # lists (float32 on CUDA, bf16 on CPU), and index_copy_ fails on any mismatch.
        with torch.autocast(out.device.type, enabled=False):
            logp = self.softmax(out[mask].float(), targets[mask])[0]
        return -logp.float().sum(), mask.sum(), hidden
