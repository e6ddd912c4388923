"""The joined source-target dictionary, in fairseq's layout and file format.

Ids 0-3 are ``<s>``, ``<pad>``, ``</s>``, ``<unk>``; then every BPE unit of the training text
by descending count (ties in alphabetical order), then ``madeupword0000``… fillers up to a
multiple of ``pad_to_multiple`` (fairseq pads to 8 so that the embedding matrix has a size the
GPU likes). ``dict.txt`` holds one ``symbol count`` line per id from 4 on, as
``fairseq-preprocess`` writes it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
SPECIALS = (BOS, PAD, EOS, UNK)


class Dictionary:
    """Symbol <-> id; ``bos``, ``pad``, ``eos``, ``unk`` are the ids 0-3."""

    bos, pad, eos, unk = 0, 1, 2, 3

    def __init__(self, symbols: Sequence[str], counts: Sequence[int] | None = None) -> None:
        self.symbols = [*SPECIALS, *symbols]
        self.counts = [0] * len(SPECIALS) + list(counts or [0] * len(symbols))
        self.index = {s: i for i, s in enumerate(self.symbols)}
        if len(self.index) != len(self.symbols):
            raise ValueError("dictionary: a symbol appears twice")

    def __len__(self) -> int:
        return len(self.symbols)

    @classmethod
    def build(cls, counts: Counter, pad_to_multiple: int = 8) -> Dictionary:
        """fairseq's ``Dictionary.finalize``: by count, ties alphabetical, then fillers."""
        ranked = sorted((s for s in counts if s not in SPECIALS), key=lambda s: (-counts[s], s))
        symbols, values = ranked, [counts[s] for s in ranked]
        i = 0
        while (len(symbols) + len(SPECIALS)) % max(pad_to_multiple, 1):
            symbols.append(f"madeupword{i:04d}")
            values.append(0)
            i += 1
        return cls(symbols, values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Dictionary:
        symbols, counts = [], []
        path = Path(path)
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.rstrip("\n").rsplit(" ", 1)
                if len(fields) != 2 or not fields[1].isdigit():
                    raise ValueError(f"{path}: line {lineno} is not 'symbol count'")
                symbols.append(fields[0])
                counts.append(int(fields[1]))
        return cls(symbols, counts)

    def save(self, path: str | os.PathLike) -> None:
        lines = (f"{s} {c}\n" for s, c in zip(self.symbols[4:], self.counts[4:], strict=True))
        Path(path).write_text("".join(lines), encoding="utf-8")

    def encode(self, line: str) -> list[int]:
        """Ids of the whitespace-separated symbols of ``line`` (no ``</s>`` appended)."""
        get, unk = self.index.get, self.unk
        return [get(w, unk) for w in line.split()]

    def decode(self, ids: Iterable[int]) -> str:
        """Symbols of ``ids`` joined by spaces, stopping at ``</s>`` and skipping padding."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i != self.pad and i != self.bos:
                out.append(self.symbols[i])
        return " ".join(out)
