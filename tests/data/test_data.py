"""Held-out splits, vocabulary, contiguous streams, leakage alarm and corpus resolution."""

import hashlib
import urllib.request

import pytest
import torch

from models.errors import ConfigError
from nlsweep.data import corpora
from nlsweep.data.config import DataConfig
from nlsweep.data.corpora import DataError, load_texts, resolve_files
from nlsweep.data.load import load_corpus
from nlsweep.data.overlap import shingle_overlap
from nlsweep.data.streams import StreamBatcher
from nlsweep.data.tokenizer import CharTokenizer
from tests.helpers import has_shakespeare


class FakeResponse:
    """Stands in for urlopen's response: the download path without a network."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def read(self):
        return self.payload


def test_split_is_disjoint_and_complete(tmp_path):
    text = "".join(chr(65 + i % 26) for i in range(1000))
    f = tmp_path / "c.txt"
    f.write_text(text)
    train, val = load_texts(DataConfig(corpus="text", path=str(f), val_fraction=0.25))
    assert train + val == text
    assert (len(train), len(val)) == (750, 250)


def test_default_split_is_last_tenth():
    train, val = load_texts(DataConfig(corpus="pydoc"))
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 1e-4


def test_vocab_comes_from_training_split_only(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("ab" * 45 + "zzzzzzzzzz")  # 'z' only in the held-out tail
    c = load_corpus(DataConfig(corpus="text", path=str(f)))
    assert c.vocab.chars == ["a", "b"]
    assert c.val_unk_rate == 1.0  # every held-out char is unknown to training
    assert CharTokenizer("ba").decode(CharTokenizer("ba").encode("abx").tolist()) == "ab\ufffd"


def test_streams_are_contiguous_and_wrap():
    tokens = torch.arange(101)
    b = StreamBatcher(tokens, batch_size=4, seq_len=5)  # 4 rows of 25 tokens
    x1, y1, first = b.next()
    x2, y2, second = b.next()
    assert first and not second
    assert torch.equal(x1[:, 0], torch.tensor([0, 25, 50, 75]))  # row b starts at b * 25
    assert torch.equal(y1, x1 + 1)  # next-token targets
    assert torch.equal(x2[:, 0], x1[:, -1] + 1)  # row b continues where it stopped
    for _ in range(3):
        b.next()
    x6, _, restarts = b.next()  # 25 // 5 = 5 windows per epoch
    assert restarts and b.epoch == 1 and torch.equal(x6, x1)


def test_stream_cursor_round_trips():
    b = StreamBatcher(torch.arange(500), batch_size=3, seq_len=7)
    for _ in range(4):
        b.next()
    saved = b.state_dict()
    want = b.next()
    c = StreamBatcher(torch.arange(500), batch_size=3, seq_len=7)
    c.load_state_dict(saved)
    got = c.next()
    assert all(torch.equal(w, g) if torch.is_tensor(w) else w == g for w, g in zip(want, got))


def test_stream_too_short_is_a_config_error():
    with pytest.raises(ConfigError, match="data.seq_len"):
        StreamBatcher(torch.arange(50), batch_size=8, seq_len=10, where="held-out")


def test_shingle_overlap_flags_repetition():
    rng = torch.Generator().manual_seed(0)
    a = "".join(chr(97 + int(i)) for i in torch.randint(0, 26, (5000,), generator=rng))
    b = "".join(chr(97 + int(i)) for i in torch.randint(0, 26, (1000,), generator=rng))
    assert shingle_overlap(a, b).value == 0.0
    assert shingle_overlap(a * 3, a[100:900]).value == 1.0  # a repeated corpus: memorisable
    half = a[:500] + b[:500]
    assert 0.4 < shingle_overlap(a, half).value < 0.5
    assert shingle_overlap(a, "short").value == 0.0


@pytest.mark.skipif(not has_shakespeare(), reason="Tiny Shakespeare not in NLSWEEP_DATA")
def test_tinyshakespeare_from_nlsweep_data():
    c = load_corpus(DataConfig(corpus="tinyshakespeare"))
    assert len(c.vocab) == 66  # 65 characters + <unk>
    assert c.val_overlap < 0.01
    assert len(c.train) + len(c.val) == 1115394


def test_data_path_wins_over_nlsweep_data(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "input.txt").write_text("x")
    monkeypatch.setenv("NLSWEEP_DATA", str(tmp_path / "elsewhere"))
    files = resolve_files(DataConfig(corpus="tinyshakespeare", path=str(mine)))
    assert files == {"input.txt": mine / "input.txt"}


def test_offline_error_names_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setenv("NLSWEEP_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as e:
        resolve_files(DataConfig(corpus="wikitext2"))
    msg = str(e.value)
    assert "\n" not in msg and "valid.txt, test.txt" in msg
    assert f"{tmp_path / 'cache'}/nlsweep/wikitext-2" in msg and "$NLSWEEP_DATA/wikitext-2/" in msg
    assert not list((tmp_path / "cache" / "nlsweep" / "wikitext-2").glob("*.txt"))


def test_download_checks_sha256(tmp_path, monkeypatch):
    monkeypatch.delenv("NLSWEEP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse(b"not it"))
    with pytest.raises(DataError, match="does not match sha256"):
        resolve_files(DataConfig(corpus="tinyshakespeare"))
    assert not (tmp_path / "nlsweep" / "tinyshakespeare" / "input.txt").exists()


def test_download_stores_verified_file(tmp_path, monkeypatch):
    monkeypatch.delenv("NLSWEEP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    payload = b"To be, or not to be"
    sha = hashlib.sha256(payload).hexdigest()
    monkeypatch.setitem(
        corpora.REMOTE, "tinyshakespeare", {"input.txt": (sha, "https://x/y", None)}
    )
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse(payload))
    files = resolve_files(DataConfig(corpus="tinyshakespeare"))
    assert files["input.txt"].read_bytes() == payload


def test_wikitext_rejects_val_fraction():
    with pytest.raises(ConfigError, match="val_fraction"):
        DataConfig(corpus="wikitext2", val_fraction=0.2)


def test_overlap_is_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    real = corpora.shingle_overlap
    monkeypatch.setattr(corpora, "shingle_overlap", lambda a, b: calls.append(1) or real(a, b))
    a, b = "abcdefghij" * 20, "abcdefghij" * 5
    assert corpora.cached_overlap(a, b) == 1.0
    assert corpora.cached_overlap(a, b) == 1.0
    assert corpora.cached_overlap(a, b + "zzzz" * 10) < 1.0  # other text, other entry
    assert len(calls) == 2


def test_full_windows_cover_the_split_once_as_the_padded_layout_does():
    """Streamed window by window (no copy of the split), equal to laying the split out as B
    padded rows, from int64 or uint16 tokens alike."""
    from models.teach import IGNORE

    for n, B, w in ((101, 4, 7), (64, 3, 64), (17, 8, 5), (200, 1, 9)):
        tokens = torch.randint(0, 60000, (n,))
        row = -(-(n - 1) // B)
        x = torch.zeros(B * row, dtype=torch.long)
        y = torch.full((B * row,), IGNORE, dtype=torch.long)
        x[: n - 1], y[: n - 1] = tokens[:-1], tokens[1:]
        x, y = x.view(B, row), y.view(B, row)
        want = [(x[:, c : c + w], y[:, c : c + w]) for c in range(0, row, w)]
        for t in (tokens, tokens.to(torch.uint16)):
            got = list(StreamBatcher(t, B, 2).full_windows(w))
            assert len(got) == len(want)
            assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, want))
