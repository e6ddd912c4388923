"""Transformer-base as fairseq's ``transformer_wmt_en_de`` builds it, and its loss.

Post-norm layers (LayerNorm after each residual add, no final LayerNorm, eps 1e-5); ReLU FFN;
dropout on embeddings+positions, residual branches, attention weights and the FFN activation;
sinusoidal positions in fairseq's layout (sin half, then cos half; positions start after the
padding id; padding gets a zero vector); token embeddings scaled by √d and drawn from
N(0, d^-0.5) with the padding row zero; one embedding matrix shared by the encoder, the
decoder and the output projection (``--share-all-embeddings``, no output bias); q/k/v
projections Xavier-uniform with gain 1/√2, every other Linear Xavier-uniform with zero bias.
Attention is ``torch.nn.functional.scaled_dot_product_attention``.

Sizes come from the config's ``model`` section; nothing here is specific to WMT-14.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Per decoder layer: self-attention keys/values so far, and the encoder's keys/values.
Cache = list[dict[str, Tensor]]


def sinusoidal_table(num_positions: int, dim: int, padding_idx: int) -> Tensor:
    """fairseq's ``SinusoidalPositionalEmbedding.get_embedding``: row p is position p."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float) * -step)
    angles = torch.arange(num_positions, dtype=torch.float)[:, None] * freqs[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    table[padding_idx] = 0
    return table


def _linear(n_in: int, n_out: int, gain: float = 1.0) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return layer


class Attention(nn.Module):
    """Multi-head attention; ``cache`` (a dict) holds keys/values for incremental decoding."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not a multiple of heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        for proj in (self.q_proj, self.k_proj, self.v_proj):  # fairseq's scaled init; the
            nn.init.xavier_uniform_(proj.weight, gain=2**-0.5)  # biases keep torch's default
        self.out_proj = _linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, H, T, C / H)
        b, t, c = x.shape
        return x.view(b, t, self.heads, c // self.heads).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        memory: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        cache: dict[str, Tensor] | None = None,
        prefix: str = "",
    ) -> Tensor:
        """Self-attention when ``memory`` is None, else attention over ``memory``.

        With ``cache``, self-attention appends this step's keys/values to the cached ones
        and attends to all of them; attention over ``memory`` computes its keys/values once.
        """
        q = self._split(self.q_proj(query))
        if cache is not None and memory is not None and f"{prefix}k" in cache:
            k, v = cache[f"{prefix}k"], cache[f"{prefix}v"]
        else:
            source = query if memory is None else memory
            k, v = self._split(self.k_proj(source)), self._split(self.v_proj(source))
            if cache is not None:
                if memory is None and f"{prefix}k" in cache:
                    k = torch.cat([cache[f"{prefix}k"], k], dim=2)
                    v = torch.cat([cache[f"{prefix}v"], v], dim=2)
                cache[f"{prefix}k"], cache[f"{prefix}v"] = k, v
        mask = None
        if key_padding_mask is not None:  # True = padding; SDPA wants True = attend
            mask = ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and cache is None,
        )
        b, h, t, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = _linear(dim, hidden), _linear(hidden, dim)
        self.activation_dropout = activation_dropout

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.relu(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(x)


class EncoderLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        ffn: int,
        heads: int,
        dropout: float,
        attn_dropout: float,
        act_dropout: float,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads, attn_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=1e-5)
        self.ffn = FeedForward(dim, ffn, act_dropout)
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = dropout

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        h = self.self_attn(x, key_padding_mask=padding_mask)
        x = self.self_attn_layer_norm(x + F.dropout(h, self.dropout, self.training))
        h = self.ffn(x)
        return self.final_layer_norm(x + F.dropout(h, self.dropout, self.training))


class DecoderLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        ffn: int,
        heads: int,
        dropout: float,
        attn_dropout: float,
        act_dropout: float,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads, attn_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=1e-5)
        self.encoder_attn = Attention(dim, heads, attn_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(dim, eps=1e-5)
        self.ffn = FeedForward(dim, ffn, act_dropout)
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-5)
        self.dropout = dropout

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor,
        cache: dict[str, Tensor] | None = None,
    ) -> Tensor:
        h = self.self_attn(x, causal=True, cache=cache, prefix="self_")
        x = self.self_attn_layer_norm(x + F.dropout(h, self.dropout, self.training))
        h = self.encoder_attn(
            x, memory, key_padding_mask=memory_padding_mask, cache=cache, prefix="encoder_"
        )
        x = self.encoder_attn_layer_norm(x + F.dropout(h, self.dropout, self.training))
        h = self.ffn(x)
        return self.final_layer_norm(x + F.dropout(h, self.dropout, self.training))


@dataclass
class EncoderOut:
    out: Tensor  # (B, S, C)
    padding_mask: Tensor  # (B, S), True at padding

    def select(self, index: Tensor) -> EncoderOut:
        return EncoderOut(self.out.index_select(0, index), self.padding_mask.index_select(0, index))


class Transformer(nn.Module):
    """Encoder-decoder Transformer with all embeddings shared (see the module docstring)."""

    def __init__(
        self,
        vocab_size: int,
        pad: int,
        *,
        embed_dim: int,
        ffn_dim: int,
        heads: int,
        encoder_layers: int,
        decoder_layers: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        max_positions: int,
        share_all_embeddings: bool = True,
    ) -> None:
        super().__init__()
        if not share_all_embeddings:
            raise ValueError("model.share_all_embeddings: only shared embeddings are implemented")
        self.pad, self.dropout, self.max_positions = pad, dropout, max_positions
        self.embed_scale = math.sqrt(embed_dim)
        self.embed_tokens = nn.Embedding(vocab_size, embed_dim, padding_idx=pad)
        nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=embed_dim**-0.5)
        with torch.no_grad():
            self.embed_tokens.weight[pad].zero_()
        table = sinusoidal_table(max_positions + pad + 1, embed_dim, pad)
        self.register_buffer("positions", table, persistent=False)
        sizes = (embed_dim, ffn_dim, heads, dropout, attention_dropout, activation_dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*sizes) for _ in range(encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*sizes) for _ in range(decoder_layers))

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        x = self.embed_scale * self.embed_tokens(tokens) + self.positions[positions]
        return F.dropout(x, self.dropout, self.training)

    def _positions(self, tokens: Tensor) -> Tensor:
        """fairseq's ``make_positions``: pad + 1, pad + 2, … over non-padding, pad on padding."""
        mask = tokens.ne(self.pad)
        return torch.cumsum(mask, dim=1) * mask + self.pad

    def encode(self, src_tokens: Tensor) -> EncoderOut:
        padding_mask = src_tokens.eq(self.pad)
        x = self._embed(src_tokens, self._positions(src_tokens))
        for layer in self.encoder_layers:
            x = layer(x, padding_mask)
        return EncoderOut(x, padding_mask)

    def decode(
        self, prev_output_tokens: Tensor, enc: EncoderOut, cache: Cache | None = None
    ) -> Tensor:
        """Logits (B, T, V); with ``cache``, only for the last position of ``prev_output_tokens``
        (all rows the same length, no padding: beam search's prefixes)."""
        positions = self._positions(prev_output_tokens)
        if cache is not None:
            prev_output_tokens, positions = prev_output_tokens[:, -1:], positions[:, -1:]
        x = self._embed(prev_output_tokens, positions)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, enc.out, enc.padding_mask, None if cache is None else cache[i])
        return F.linear(x, self.embed_tokens.weight)

    def forward(self, src_tokens: Tensor, prev_output_tokens: Tensor) -> Tensor:
        return self.decode(prev_output_tokens, self.encode(src_tokens))

    # The interface of nmt.search.beam_search.
    def new_cache(self) -> Cache:
        return [{} for _ in self.decoder_layers]

    def decode_step(self, tokens: Tensor, enc: EncoderOut, cache: Cache) -> Tensor:
        """float32 log-probabilities (N, V) of the next token after each prefix in ``tokens``."""
        logits = self.decode(tokens, enc, cache)[:, -1, :]
        return F.log_softmax(logits.float(), dim=-1)

    @staticmethod
    def reorder_cache(cache: Cache, index: Tensor) -> None:
        for layer in cache:
            for key, value in layer.items():
                layer[key] = value.index_select(0, index)


def label_smoothed_loss(
    logits: Tensor, target: Tensor, epsilon: float, pad: int
) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross entropy as fairseq 0.9 and the authors' fork compute it, summed over
    non-padding targets.

    With V the vocabulary size: ``loss = (1 - ε) · NLL + ε / V · Σ_v (-log p_v)`` (later fairseq
    releases spread ε over V - 1 classes instead; the fork predates that). This is
    ``F.cross_entropy(..., label_smoothing=ε)``. Returns ``(loss, nll)``, both sums (the loop
    divides by the number of target tokens). Log-probabilities are float32.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))
    target = target.reshape(-1, 1)
    keep = target.ne(pad)
    nll = -lprobs.gather(1, target)[keep].sum()
    smooth = -lprobs.sum(dim=-1, keepdim=True)[keep].sum()
    eps_i = epsilon / lprobs.size(-1)
    return (1.0 - epsilon) * nll + eps_i * smooth, nll


MODEL_KEYS = (
    "embed_dim",
    "ffn_dim",
    "heads",
    "encoder_layers",
    "decoder_layers",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "max_positions",
    "share_all_embeddings",
)


def build_model(section: dict, vocab_size: int, pad: int, where: str = "config") -> Transformer:
    """The Transformer of a config's ``model`` section; one error line for wrong keys."""
    wrong = sorted(set(section) ^ set(MODEL_KEYS))
    if wrong:
        raise ValueError(
            f"{where}: model keys must be {', '.join(MODEL_KEYS)}; unknown or missing: "
            f"{', '.join(wrong)}"
        )
    return Transformer(vocab_size, pad, **section)
