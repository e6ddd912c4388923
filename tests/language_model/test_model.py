"""The LSTM language model: the paper's sizes and initialisation, cutoffs, carried state."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from language_model.model import LSTMLanguageModel, usable_cutoffs

PAPER = dict(
    embed_dim=300,
    hidden_size=2048,
    num_layers=2,
    dropout=0.1,
    cutoffs=[60000, 100000, 640000],
    div_value=4.0,
)


def tiny(vocab: int = 48, cutoffs: tuple[int, ...] = (20,)) -> LSTMLanguageModel:
    torch.manual_seed(0)
    return LSTMLanguageModel(
        vocab,
        embed_dim=6,
        hidden_size=16,
        num_layers=2,
        dropout=0.0,
        cutoffs=list(cutoffs),
        div_value=4.0,
    )


def test_paper_size_lstm_and_initialisation():
    torch.manual_seed(0)
    m = LSTMLanguageModel(48, **PAPER)
    h = 2048
    lstm = sum(p.numel() for p in m.lstm.parameters())
    assert lstm == 4 * h * (300 + h) + 4 * h * (h + h) + 2 * 2 * 4 * h  # 52,893,696
    assert m.embedding.weight.shape == (48, 300)
    # kaiming-uniform (fan_in = 300, gain sqrt 2): bound sqrt(6 / 300).
    assert m.embedding.weight.abs().max() <= math.sqrt(6 / 300)
    assert m.embedding.weight.abs().max() > 0.9 * math.sqrt(6 / 300)
    for layer, fan_in in ((0, 300), (1, h)):
        w_ih, w_hh = getattr(m.lstm, f"weight_ih_l{layer}"), getattr(m.lstm, f"weight_hh_l{layer}")
        for w, fan in ((w_ih, fan_in), (w_hh, h)):
            bound = math.sqrt(6 / (fan + 4 * h))  # xavier-uniform over the whole matrix
            assert bound * 0.9 < w.abs().max() <= bound
        b_ih, b_hh = getattr(m.lstm, f"bias_ih_l{layer}"), getattr(m.lstm, f"bias_hh_l{layer}")
        assert torch.equal(b_ih[h : 2 * h], torch.ones(h))  # forget gate (order i, f, g, o)
        assert not b_ih[:h].any() and not b_ih[2 * h :].any() and not b_hh.any()
    assert m.drop.p == 0.1 and m.lstm.dropout == 0.1


def test_cutoffs_beyond_the_vocabulary_are_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="language_model.model"):
        assert usable_cutoffs([60000, 100000, 640000], 793471) == [60000, 100000, 640000]
        assert not caplog.records
        assert usable_cutoffs([60000, 100000, 640000], 70000) == [60000]
    assert "[100000, 640000]" in caplog.text and "70000" in caplog.text
    m = LSTMLanguageModel(70000, **{**PAPER, "hidden_size": 8, "embed_dim": 4})
    assert isinstance(m.softmax, torch.nn.AdaptiveLogSoftmaxWithLoss)
    assert m.softmax.cutoffs == [60000, 70000] and m.softmax.div_value == 4.0


def test_small_vocabulary_falls_back_to_a_full_softmax_that_normalises():
    m = tiny(cutoffs=(60000,)).eval()
    x = torch.randint(0, 48, (3, 4))
    out, _ = m.features(x, m.init_hidden(3))
    assert torch.allclose(m.softmax.log_prob(out.reshape(-1, 16)).exp().sum(-1), torch.ones(12))


def test_padding_targets_are_not_predicted():
    m = tiny().eval()
    x, y = torch.randint(0, 48, (2, 5)), torch.randint(0, 48, (2, 5))
    nll, count, _ = m(x, y, m.init_hidden(2))
    y2 = y.clone()
    y2[1, 2:] = -1
    nll2, count2, _ = m(x, y2, m.init_hidden(2))
    assert count == 10 and count2 == 7
    out, _ = m.features(x, m.init_hidden(2))
    logp = m.softmax.log_prob(out.reshape(-1, 16)).gather(1, y.reshape(-1, 1)).reshape(2, 5)
    assert torch.allclose(nll, -logp.sum()) and torch.allclose(nll2, -logp[y2 >= 0].sum())


def test_hidden_state_carried_across_windows_equals_one_long_window():
    m = tiny().eval()
    x = torch.randint(0, 48, (2, 10))
    whole, _ = m.features(x, m.init_hidden(2))
    first, hidden = m.features(x[:, :6], m.init_hidden(2))
    second, _ = m.features(x[:, 6:], (hidden[0].detach(), hidden[1].detach()))
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-6)


@pytest.mark.parametrize("cutoffs", [(20,), (10, 30), ()])
def test_gradients_reach_every_used_parameter(cutoffs):
    m = tiny(cutoffs=cutoffs or (99,))
    x = torch.randint(0, 48, (4, 6))
    y = torch.arange(24).reshape(4, 6) * 2 % 48  # targets in every cluster
    nll, count, _ = m(x, y, m.init_hidden(4))
    (nll / count).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_bf16_autocast_forward_backward_with_adaptive_softmax():
    """Under bf16 autocast the LSTM and the adaptive softmax (head and tail clusters) run, and
    the loss stays float32 and close to the float32 loss."""
    torch.manual_seed(0)
    model = LSTMLanguageModel(
        50, embed_dim=8, hidden_size=16, num_layers=2, dropout=0.0, cutoffs=[10, 20], div_value=2.0
    )
    inputs = torch.randint(0, 50, (4, 5))
    hidden = model.init_hidden(4)
    nll32, count, _ = model(inputs, inputs, hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll16, count16, _ = model(inputs, inputs, hidden)
    nll16.backward()
    assert nll16.dtype == torch.float32 and int(count16) == int(count) == 20
    assert torch.isclose(nll16, nll32, rtol=0.05)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
