"""A few dozen English-German sentence pairs, written for these tests, in the raw text layout
the preprocessing reads (PREFIX.en / PREFIX.de, one sentence per line)."""

from __future__ import annotations

from pathlib import Path

import pytest

PAIRS = [
    ("The house is small.", "Das Haus ist klein."),
    ("The garden is very big.", "Der Garten ist sehr groß."),
    ("I see the old house.", "Ich sehe das alte Haus."),
    ("We are going home today.", "Wir gehen heute nach Hause."),
    ("The children play in the garden.", "Die Kinder spielen im Garten."),
    ("She reads a book about the sea.", "Sie liest ein Buch über das Meer."),
    ("He doesn't like cold coffee.", "Er mag keinen kalten Kaffee."),
    ("The train leaves at 8:15.", "Der Zug fährt um 8:15 Uhr ab."),
    ("The e-mail arrived this morning.", "Die E-Mail kam heute Morgen an."),
    ("My brother's car is red.", "Das Auto meines Bruders ist rot."),
    ("It costs 1,250.50 euros.", "Es kostet 1.250,50 Euro."),
    ('"Where is the station?" she asked.', "„Wo ist der Bahnhof?“, fragte sie."),
    ("The old man walks slowly.", "Der alte Mann geht langsam."),
    ("We drink tea in the afternoon.", "Wir trinken am Nachmittag Tee."),
    ("The weather is nice today.", "Das Wetter ist heute schön."),
    ("They live in a small town.", "Sie wohnen in einer kleinen Stadt."),
    ("The cat sleeps on the sofa.", "Die Katze schläft auf dem Sofa."),
    ("I have two brothers and a sister.", "Ich habe zwei Brüder und eine Schwester."),
    ("The shop opens at nine o'clock.", "Der Laden öffnet um neun Uhr."),
    ("Please close the window.", "Bitte schließ das Fenster."),
    ("The north-south line is closed.", "Die Nord-Süd-Linie ist gesperrt."),
    ("Our teacher is very friendly.", "Unsere Lehrerin ist sehr freundlich."),
    ("The dog runs through the park.", "Der Hund läuft durch den Park."),
    ("We need bread, milk and eggs.", "Wir brauchen Brot, Milch und Eier."),
    ("The meeting starts tomorrow.", "Die Sitzung beginnt morgen."),
    ("He writes a long letter.", "Er schreibt einen langen Brief."),
    ("The water is too cold.", "Das Wasser ist zu kalt."),
    ("She works in a large hospital.", "Sie arbeitet in einem großen Krankenhaus."),
    ("The book is on the table.", "Das Buch liegt auf dem Tisch."),
    ("I don't know the answer.", "Ich kenne die Antwort nicht."),
    ("The children are asleep.", "Die Kinder schlafen."),
    ("The bridge was built in 1890.", "Die Brücke wurde 1890 gebaut."),
    ("We see the mountains from here.", "Von hier sehen wir die Berge."),
    ("The small house has a red door.", "Das kleine Haus hat eine rote Tür."),
    ("The students learn German.", "Die Studenten lernen Deutsch."),
    ("My sister drinks coffee with milk.", "Meine Schwester trinkt Kaffee mit Milch."),
    ("The garden behind the house is green.", "Der Garten hinter dem Haus ist grün."),
    ("He buys fresh bread every day.", "Er kauft jeden Tag frisches Brot."),
    ("The station is not far away.", "Der Bahnhof ist nicht weit weg."),
    ("The old town is very beautiful.", "Die Altstadt ist sehr schön."),
]
TEST = [
    ("The house is very old.", "Das Haus ist sehr alt."),
    ("We drink coffee in the garden.", "Wir trinken Kaffee im Garten."),
    ("It’s a long-term plan.", "Es ist ein langfristiger Plan."),
    ("The children read a book.", "Die Kinder lesen ein Buch."),
]


def write_pairs(prefix: Path, pairs: list[tuple[str, str]], langs: tuple[str, str] = ("en", "de")):
    """PREFIX.en and PREFIX.de; returns the prefix as a string."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for side, lang in enumerate(langs):
        text = "".join(pair[side] + "\n" for pair in pairs)
        Path(f"{prefix}.{lang}").write_text(text, encoding="utf-8")
    return str(prefix)


@pytest.fixture
def raw(tmp_path: Path) -> dict[str, str]:
    """Two training corpora and a test set."""
    root = tmp_path / "raw"
    return {
        "train": [
            write_pairs(root / "corpus-a", PAIRS[:25]),
            write_pairs(root / "corpus-b", PAIRS[25:]),
        ],
        "test": write_pairs(root / "newstest", TEST),
    }


CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "wmt14.yaml")
#: Options for the tiny corpus: few merges, a valid line every 10.
SMALL_PREP = ["bpe_merges=200", "valid_every=10"]


#: A tiny Transformer, batches of 64 tokens, 2 micro-batches per update (5 updates an epoch),
#: the data's preprocessing options, short valid decoding.
SMALL = [
    "max_tokens=64",
    "tokens_per_update=128",
    "log_every=0",
    "keep_last=2",
    "model.embed_dim=16",
    "model.ffn_dim=32",
    "model.heads=2",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "preprocess.bpe_merges=200",
    "preprocess.valid_every=10",
    "generations.valid.max_len_b=8",
    "generations.paper.max_len_b=8",
]


def train_small(data_dir: Path, out: Path, *extra: str, row: str = "Apollo") -> dict:
    """``nmt.train.main`` with :data:`SMALL` on the CPU, then ``extra`` flags and overrides."""
    from nmt import train

    argv = ["--config", CONFIG, "--row", row, "--data-dir", str(data_dir), "--out-dir", str(out)]
    return train.main([*argv, "--device", "cpu", *SMALL, *extra])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus preprocessed once (read-only for the tests that share it)."""
    from nmt.preprocess import options_from_config, preprocess

    root = tmp_path_factory.mktemp("nmt")
    train = [
        write_pairs(root / "raw" / "a", PAIRS[:25]),
        write_pairs(root / "raw" / "b", PAIRS[25:]),
    ]
    test = write_pairs(root / "raw" / "newstest", TEST)
    opts = options_from_config(CONFIG, SMALL_PREP)
    path, _ = preprocess(opts, train, root / "data", test=test, workers=1)
    return path
