"""Transformer-base and the label-smoothed loss against hand computations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import config as cfg
from nmt.model import Transformer, label_smoothed_loss, sinusoidal_table

ROOT = Path(__file__).resolve().parents[2]
PAD, EOS = 1, 2
TINY = {
    "embed_dim": 16,
    "ffn_dim": 32,
    "heads": 4,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "max_positions": 64,
    "share_all_embeddings": True,
}


def tiny(vocab: int = 30, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(vocab, PAD, **TINY)


def test_transformer_base_parameter_count():
    """transformer_wmt_en_de from the table's model section, counted by hand for V symbols."""
    model_section = cfg.load_table(ROOT / "configs/wmt14.yaml")["defaults"]["model"]
    vocab = 1000
    model = Transformer(vocab, PAD, **model_section)
    d, f = 512, 2048
    attention = 4 * (d * d + d)  # q, k, v, out projections with biases
    ffn = d * f + f + f * d + d
    norm = 2 * d
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    expected = vocab * d + 6 * encoder_layer + 6 * decoder_layer  # one shared embedding
    assert expected == 44_138_496 + 512 * vocab
    assert sum(p.numel() for p in model.parameters()) == expected
    assert "positions" not in model.state_dict()  # the sinusoidal table is not a parameter


def test_sinusoidal_table_is_fairseqs_layout():
    dim, pad = 8, 1
    table = sinusoidal_table(10, dim, pad)
    half = dim // 2
    for p in (0, 2, 3, 9):
        for i in range(half):
            rate = math.exp(-i * math.log(10000) / (half - 1))
            assert table[p, i].item() == pytest.approx(math.sin(p * rate), abs=1e-6)
            assert table[p, half + i].item() == pytest.approx(math.cos(p * rate), abs=1e-6)
    assert torch.all(table[pad] == 0)
    odd = sinusoidal_table(5, 7, pad)
    assert odd.shape == (5, 7) and torch.all(odd[:, -1] == 0)


def test_positions_start_after_padding_and_skip_it():
    model = tiny()
    tokens = torch.tensor([[5, 6, 7, EOS], [8, EOS, PAD, PAD]])
    assert model._positions(tokens).tolist() == [[2, 3, 4, 5], [2, 3, PAD, PAD]]


def test_init_follows_fairseq():
    model = Transformer(2000, PAD, **{**TINY, "embed_dim": 64, "heads": 4})
    emb = model.embed_tokens.weight
    assert torch.all(emb[PAD] == 0)
    assert emb[2:].std().item() == pytest.approx(64**-0.5, rel=0.05)
    layer = model.encoder_layers[0]
    bound = math.sqrt(6 / (64 + 64)) * 2**-0.5  # xavier-uniform, gain 1/sqrt(2)
    assert layer.self_attn.q_proj.weight.abs().max().item() <= bound
    assert layer.self_attn.q_proj.weight.abs().max().item() > 0.9 * bound
    assert torch.all(layer.self_attn.out_proj.bias == 0) and torch.all(layer.ffn.fc1.bias == 0)


def test_label_smoothed_loss_is_fairseq_0_9s():
    """fairseq 0.9 / the authors' fork: (1 - eps) * nll + eps / V * smooth (not eps / (V - 1))."""
    loss, nll = label_smoothed_loss(
        torch.tensor([[[3.0, 0.0, 0.0, 0.0]]]), torch.tensor([[0]]), 0.1, PAD
    )
    assert loss.item() == pytest.approx(0.364206, abs=1e-6)  # 0.439206 with eps / (V - 1)
    assert nll.item() == pytest.approx(math.log(math.exp(3) + 3) - 3, rel=1e-6)


def test_label_smoothed_loss_by_hand():
    vocab, eps = 5, 0.1
    logits = torch.tensor(
        [
            [[1.0, 2.0, 0.5, -1.0, 0.0], [0.3, 0.1, 2.0, 1.0, -0.5]],
            [[2.0, 0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]],
        ]
    )
    target = torch.tensor([[2, 4], [0, PAD]])  # the last position is padding
    want_loss = want_nll = 0.0
    for b in range(2):
        for t in range(2):
            y = int(target[b, t])
            if y == PAD:
                continue
            row = logits[b, t].tolist()
            log_z = math.log(sum(math.exp(v) for v in row))
            logp = [v - log_z for v in row]
            want_nll += -logp[y]
            want_loss += (1 - eps) * -logp[y] + eps / vocab * sum(-v for v in logp)
    loss, nll = label_smoothed_loss(logits, target, eps, PAD)
    assert nll.item() == pytest.approx(want_nll, rel=1e-6)
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    # the same as torch's smoothing with alpha = eps
    torch_loss = F.cross_entropy(
        logits.view(-1, vocab),
        target.view(-1),
        ignore_index=PAD,
        reduction="sum",
        label_smoothing=eps,
    )
    assert loss.item() == pytest.approx(torch_loss.item(), rel=1e-6)


def test_padding_is_never_attended_or_counted():
    model = tiny().eval()
    short_src, short_tgt = [5, 6, EOS], [7, 8, 9]
    long_src, long_tgt = [10, 11, 12, 13, 14, EOS], [15, 16, 17, 18, 19]

    def batch(pairs):
        s = max(len(p[0]) for p in pairs)
        t = max(len(p[1]) for p in pairs) + 1
        src = torch.tensor([p[0] + [PAD] * (s - len(p[0])) for p in pairs])
        prev = torch.tensor([[EOS, *p[1]] + [PAD] * (t - 1 - len(p[1])) for p in pairs])
        tgt = torch.tensor([[*p[1], EOS] + [PAD] * (t - 1 - len(p[1])) for p in pairs])
        return src, prev, tgt

    with torch.no_grad():
        alone = model(*batch([(short_src, short_tgt)])[:2])
        src, prev, tgt = batch([(short_src, short_tgt), (long_src, long_tgt)])
        together = model(src, prev)
        torch.testing.assert_close(together[0, : len(short_tgt) + 1], alone[0])
        # the loss of the padded batch is the sum of each sentence's, padding uncounted
        loss, nll = label_smoothed_loss(together, tgt, 0.1, PAD)
        parts = [
            label_smoothed_loss(model(*batch([p])[:2]), batch([p])[2], 0.1, PAD)
            for p in ((short_src, short_tgt), (long_src, long_tgt))
        ]
    assert loss.item() == pytest.approx(sum(p[0].item() for p in parts), rel=1e-5)
    assert nll.item() == pytest.approx(sum(p[1].item() for p in parts), rel=1e-5)


def test_incremental_decoding_equals_full_decoding():
    model = tiny().eval()
    src = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD]])
    prev = torch.tensor([[EOS, 10, 11, 12, 13], [EOS, 14, 15, 16, 17]])
    with torch.no_grad():
        enc = model.encode(src)
        full = F.log_softmax(model.decode(prev, enc), dim=-1)
        cache = model.new_cache()
        for t in range(prev.size(1)):
            step = model.decode_step(prev[:, : t + 1], enc, cache)
            torch.testing.assert_close(step, full[:, t], rtol=1e-5, atol=1e-5)
        # reordering the cache follows a reordering of the rows
        cache2 = model.new_cache()
        for t in range(3):
            model.decode_step(prev[:, : t + 1], enc, cache2)
        index = torch.tensor([1, 0])
        model.reorder_cache(cache2, index)
        step = model.decode_step(prev[index, :4], enc.select(index), cache2)
        torch.testing.assert_close(step, full[index, 3], rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
    model = tiny()
    src = torch.tensor([[5, 6, 7, EOS]])
    prev = torch.tensor([[EOS, 10, 11]])
    model.train()
    assert not torch.equal(model(src, prev), model(src, prev))
    model.eval()
    assert torch.equal(model(src, prev), model(src, prev))
