"""Beam search against a model whose next-token probabilities are set by hand."""

from __future__ import annotations

import math

import pytest
import torch

from nmt.model import Transformer
from nmt.search import beam_search, generation_options

PAD, EOS = 1, 2
A, B, C, D = 4, 5, 6, 7
VOCAB = 10
LOW = 1e-6  # probability of anything the table does not mention


class TableModel:
    """Next-token probabilities looked up by the prefix generated so far (after </s>)."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], default: dict[int, float]):
        self.table, self.default = table, default

    def encode(self, src_tokens: torch.Tensor) -> _Enc:
        return _Enc(src_tokens)

    def new_cache(self) -> list:
        return []

    @staticmethod
    def reorder_cache(cache: list, index: torch.Tensor) -> None:
        pass

    def decode_step(self, tokens: torch.Tensor, enc: _Enc, cache: list) -> torch.Tensor:
        rows = []
        for row in tokens.tolist():
            probs = self.table.get(tuple(row[1:]), self.default)
            rows.append([math.log(probs.get(v, LOW)) for v in range(VOCAB)])
        return torch.tensor(rows, dtype=torch.float)


class _Enc:
    def __init__(self, src: torch.Tensor) -> None:
        self.src = src

    def select(self, index: torch.Tensor) -> _Enc:
        return _Enc(self.src[index])


def search(model, src: list[list[int]], **kw):
    width = max(len(s) for s in src)
    tokens = torch.tensor([s + [PAD] * (width - len(s)) for s in src])
    args = {
        "pad": PAD,
        "eos": EOS,
        "beam": 2,
        "lenpen": 1.0,
        "max_len_a": 0.0,
        "max_len_b": 10,
        "max_positions": 1024,
        "vocab_size": VOCAB,
    }
    return beam_search(model, tokens, **{**args, **kw})


# "a </s>" is likely early; "b c d </s>" is less likely in total but longer.
P = {
    (): {A: 0.6, B: 0.4},
    (A,): {EOS: 0.9, C: 0.1},
    (B,): {C: 0.95},
    (B, C): {D: 0.95},
    (B, C, D): {EOS: 0.95},
}
UNIFORM = {v: 1 / 6 for v in range(4, 10)}
SHORT = math.log(0.6) + math.log(0.9)  # a </s>: 2 tokens with </s>
LONG = math.log(0.4) + 3 * math.log(0.95)  # b c d </s>: 4 tokens


@pytest.mark.parametrize(("lenpen", "winner"), [(0.0, [A]), (0.6, [A]), (1.0, [B, C, D])])
def test_length_penalty_changes_the_winner(lenpen, winner):
    (hyps,) = search(TableModel(P, UNIFORM), [[8, 9, EOS]], lenpen=lenpen)
    assert [h.tokens for h in hyps] == sorted([[A], [B, C, D]], key=lambda t: t != winner)
    scores = {tuple(h.tokens): h.score for h in hyps}
    assert scores[(A,)] == pytest.approx(SHORT / 2**lenpen, rel=1e-6)
    assert scores[(B, C, D)] == pytest.approx(LONG / 4**lenpen, rel=1e-6)


def test_no_eos_at_the_first_step_and_only_beam_finished():
    # </s> is the likeliest first token, but min_len 1 forbids it; 3 candidates end at step 1
    table = {(): {EOS: 0.7, A: 0.2, B: 0.1}, (A,): {EOS: 0.99}, (B,): {EOS: 0.99}}
    (hyps,) = search(TableModel(table, UNIFORM), [[8, EOS]], lenpen=0.0)
    assert [h.tokens for h in hyps] == [[A], [B]]
    assert hyps[0].logprob == pytest.approx(math.log(0.2) + math.log(0.99), rel=1e-6)


def test_two_beams_of_candidates_keep_a_third_alive():
    # at step 1 the best candidate ends (a </s>); the next two (b d, b e) both go on, and the
    # best second translation comes through the third candidate, b e
    E = 8
    table = {
        (): {A: 0.5, B: 0.45},
        (A,): {EOS: 0.9, C: 0.05},
        (B,): {D: 0.5, E: 0.45},
        (B, E): {EOS: 0.99},
    }
    (hyps,) = search(TableModel(table, UNIFORM), [[8, EOS]], lenpen=0.0, max_len_b=6)
    assert [h.tokens for h in hyps] == [[A], [B, E]]


def test_hypothesis_reaching_max_len_is_ended_with_eos():
    # a is always likely and </s> never: every hypothesis runs into max_len = 0 * 3 + 3
    table = {}
    default = {A: 0.9, B: 0.05}
    (hyps,) = search(TableModel(table, default), [[8, 9, EOS]], max_len_b=3, lenpen=1.0)
    assert hyps[0].tokens == [A, A, A]
    assert all(len(h.tokens) == 3 for h in hyps) and len(hyps) == 2
    want = 3 * math.log(0.9) + math.log(LOW)  # the forced </s> keeps its own log-probability
    assert hyps[0].logprob == pytest.approx(want, rel=1e-6)
    assert hyps[0].score == pytest.approx(want / 4, rel=1e-6)  # 3 tokens + </s>
    # max_len is capped by the model's positions: min(a * src_len + b, max_positions - 1)
    (capped,) = search(TableModel(table, default), [[8, 9, EOS]], max_len_b=200, max_positions=3)
    assert capped[0].tokens == [A, A]
    # max_len_a scales with the source length, which counts its </s>
    (scaled,) = search(TableModel(table, default), [[8, 9, EOS]], max_len_a=2.0, max_len_b=0)
    assert len(scaled[0].tokens) == 6


def test_a_batch_decodes_each_sentence_as_alone():
    default = {A: 0.5, B: 0.3, EOS: 0.01}
    model = TableModel(P, default)
    src = [[8, EOS], [8, 9, 8, 9, EOS], [9, 9, EOS]]
    batched = search(model, src, max_len_a=1.0, max_len_b=0, beam=3)
    for s, hyps in zip(src, batched, strict=True):
        (alone,) = search(model, [s], max_len_a=1.0, max_len_b=0, beam=3)
        assert [(h.tokens, h.score) for h in hyps] == [(h.tokens, h.score) for h in alone]
        assert max(len(h.tokens) for h in hyps) <= len(s)


def test_beam_one_on_the_transformer_is_greedy_decoding():
    torch.manual_seed(0)
    model = Transformer(
        20,
        PAD,
        embed_dim=16,
        ffn_dim=32,
        heads=2,
        encoder_layers=1,
        decoder_layers=2,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        max_positions=64,
    ).eval()
    src = torch.tensor([[5, 6, 7, EOS], [8, EOS, PAD, PAD]])
    hyps = beam_search(
        model,
        src,
        pad=PAD,
        eos=EOS,
        beam=1,
        lenpen=1.0,
        max_len_a=0.0,
        max_len_b=6,
        max_positions=64,
        vocab_size=20,
    )
    with torch.no_grad():
        for row, (best,) in zip(src, hyps, strict=True):
            prefix = [EOS]
            for _ in range(6):
                logits = model(row[None], torch.tensor([prefix]))[0, -1]
                logits[PAD] = -math.inf
                if len(prefix) == 1:
                    logits[EOS] = -math.inf
                token = int(logits.argmax())
                if token == EOS:
                    break
                prefix.append(token)
            assert best.tokens == prefix[1:]


def test_a_beam_as_wide_as_the_vocabulary_is_narrowed_to_vocab_minus_one():
    """fairseq's SequenceGenerator: beam = min(beam, V - 1); torch.topk raised before."""
    wide = search(TableModel(P, UNIFORM), [[A, EOS]], beam=VOCAB)
    assert len(wide[0]) == VOCAB - 1
    assert (
        wide[0][0].tokens == search(TableModel(P, UNIFORM), [[A, EOS]], beam=VOCAB - 1)[0][0].tokens
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("beam", 0),
        ("beam", 2.5),
        ("beam", True),
        ("lenpen", "x"),
        ("max_len_a", -1.0),
        ("max_len_b", -1),
    ],
)
def test_bad_generation_settings_are_one_line(key, value):
    config = {
        "config": "c.yaml",
        "generations": {"g": {"beam": 4, "lenpen": 0.6, "max_len_a": 0.0, "max_len_b": 200}},
    }
    assert generation_options(config, "g")["beam"] == 4
    config["generations"]["g"][key] = value
    with pytest.raises(ValueError, match=f"c.yaml: generations.g.{key} must be"):
        generation_options(config, "g")
