"""Corpus `text` reads what `data.path` names: a file, a folder or a glob of text, .jsonl,
.parquet or .gz files, or a datasets folder. The same documents give the same splits in
every format; the held-out split is whole documents chosen by digest; documents end with an
end-of-document token; and input that cannot be read as documents is refused in one line,
never trained on as something else."""

import gzip
import json
import random

import pytest
import torch

from nlsweep.cli import main
from nlsweep.data import CharTokenizer, DataConfig, load_corpus, load_texts
from nlsweep.data.corpora import DataError
from nlsweep.data.sources import split_documents, split_tail_at_line
from nlsweep.data.tokenizer import SentencePieceTokenizer, train_sentencepiece
from tests.helpers import NO_GPU, nothing_started, one_line, spec_text


def docs_of(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["tide", "moon", "salt", "reef", "gull", "kelp", "dune", "wave", "ébène", "海"]
    return [
        "\n".join(" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(3))
        for _ in range(n)
    ]


DOCS = docs_of(40)


def write_formats(folder, docs=DOCS) -> dict[str, str]:
    """The same documents in each format: {format: data.path}."""
    txt = folder / "txt"
    txt.mkdir()
    for i, d in enumerate(docs):
        (txt / f"doc{i:03d}.txt").write_text(d, encoding="utf-8")
    rows = "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs))
    (folder / "c.jsonl").write_text(rows, encoding="utf-8")
    with gzip.open(folder / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(rows)
    (folder / "one.txt").write_text("<eod>".join(docs), encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), folder / "c.parquet")
    return {
        "folder": str(txt),
        "glob": str(txt / "doc*.txt"),
        "jsonl": str(folder / "c.jsonl"),
        "jsonl.gz": str(folder / "c.jsonl.gz"),
        "parquet": str(folder / "c.parquet"),
    }


def cfg(path, **kw) -> DataConfig:
    return DataConfig(corpus="text", path=str(path), seq_len=8, batch_size=2, **kw)


def test_every_format_gives_the_same_documents_and_split(tmp_path):
    paths = write_formats(tmp_path)
    want = split_documents(DOCS, 0.1)
    for fmt, path in paths.items():
        assert load_texts(cfg(path)) == want, fmt
    assert load_texts(cfg(tmp_path / "one.txt", separator="<eod>")) == want
    train, val = want
    assert len(train) + len(val) == len(DOCS) and not set(train) & set(val)


def test_a_datasets_folder_reads_like_the_others(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": DOCS}).save_to_disk(str(folder))
    assert load_texts(cfg(folder, text_field="body")) == split_documents(DOCS, 0.1)
    both = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(
        str(both)
    )
    with pytest.raises(DataError, match=r"a DatasetDict with splits train; give the folder"):
        load_texts(cfg(both))


def test_the_split_is_by_document_digest_whatever_the_order():
    docs = docs_of(3000, seed=1) + DOCS[:5]  # five exact duplicates of other documents
    docs = docs + DOCS[:5]
    train, val = split_documents(docs, 0.1)
    shuffled = random.Random(3).sample(docs, len(docs))
    train2, val2 = split_documents(shuffled, 0.1)
    assert sorted(train) == sorted(train2) and sorted(val) == sorted(val2)
    assert not set(train) & set(val)  # duplicates land on one side
    n = len(set(docs))
    held = len(set(val)) / n
    assert abs(held - 0.1) < 3 * (0.1 * 0.9 / n) ** 0.5  # a binomial proportion
    # a split that would leave a side empty moves one document across
    assert [len(s) for s in split_documents(DOCS[:2], 0.001)] == [1, 1]
    assert [len(s) for s in split_documents(DOCS[:2], 0.999)] == [1, 1]


def test_one_document_is_held_out_from_a_line_boundary(tmp_path):
    text = "".join(f"line {i} of the only document\n" for i in range(100))
    head, tail = split_tail_at_line(text, 0.1)
    assert head + tail == text and head.endswith("\n") and tail.startswith("line 9")
    assert abs(len(tail) - 0.1 * len(text)) <= 32
    assert split_tail_at_line("no newline at all", 0.5) == ("no newli", "ne at all")
    (tmp_path / "a.txt").write_text(text)
    assert load_texts(cfg(tmp_path / "a.txt")) == (head, tail)


def test_documents_end_with_an_end_of_document_token_that_counts_no_bytes(tmp_path):
    path = write_formats(tmp_path)["jsonl"]
    corpus = load_corpus(cfg(path))
    tok = corpus.vocab
    train, val = load_texts(cfg(path))
    assert tok.eod == 1 and len(tok) == len(set("".join(train))) + 2
    assert int((corpus.train == 1).sum()) == len(train)
    assert int((corpus.val == 1).sum()) == len(val) and int(corpus.val[-1]) == 1
    assert int(corpus.val_units["bytes"].sum()) == sum(len(d.encode()) for d in val)
    assert int(corpus.val_units["chars"].sum()) == sum(len(d) for d in val)
    assert int(corpus.val_units["bytes"][corpus.val == 1].sum()) == 0
    # never the JSON syntax: the vocabulary is the documents' characters
    assert not {"{", "}", '"', ":"} & set(tok.chars)
    text = tok.decode(corpus.val.tolist())
    assert text == "".join(d + "\n" for d in val)


def test_sentencepiece_reserves_its_eos_for_the_end_of_a_document():
    model = train_sentencepiece(DOCS, 40, "unigram", eod=True)
    tok = SentencePieceTokenizer(model)
    assert tok.eod == 1
    ids, units = tok.encode_split_with_units(DOCS[:3])
    assert int((ids == 1).sum()) == 3 and int(ids[-1]) == 1
    assert int(units["bytes"].sum()) == sum(len(d.encode()) for d in DOCS[:3])
    without = SentencePieceTokenizer(train_sentencepiece(DOCS, 40, "unigram"))
    assert without.eod is None
    with pytest.raises(Exception, match="reserves no end-of-document id"):
        without.encode_split(DOCS[:3])


def test_char_encoding_is_the_vocabulary_lookup():
    rng = random.Random(0)
    alphabet = "abcxyz \n\té€😀日"
    train = "".join(rng.choices(alphabet[:-2], k=500))
    other = "".join(rng.choices(alphabet, k=500))  # some characters training never had
    for eod in (False, True):
        tok = CharTokenizer(train, eod=eod)
        want = [tok.index.get(c, 0) for c in other]
        assert tok.encode(other).tolist() == want
    assert CharTokenizer("").encode("ab").tolist() == [0, 0]
    assert CharTokenizer("ba").encode("").dtype == torch.long


def bad_cases(tmp_path) -> dict[str, tuple[str, str]]:
    """{name: (data.path, what its line must say)}, with data.text_field where it is set."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("a,b\n")
    (tmp_path / "rows.jsonl").write_text('{"body": "a document"}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "cut\n')
    (tmp_path / "num.jsonl").write_text('{"text": 12}\n')
    (tmp_path / "bad.txt.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not deflate")
    (tmp_path / "ids.npy").write_bytes(b"\x93NUMPY fake")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "rows.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    (tmp_path / "plain.txt").write_text("some text\n" * 10)
    t = tmp_path
    return {
        "missing": (f"{t}/nope.txt", f"data.path: {t}/nope.txt does not exist"),
        "empty glob": (f"{t}/*.zzz", f"data.path: no files match {t}/*.zzz"),
        "nothing readable": (f"{t}/empty", f"data.path: {t}/empty has no readable files"),
        "jsonl field": (f"{t}/rows.jsonl", f"{t}/rows.jsonl:1: no field 'text' (it has: body)"),
        "jsonl syntax": (f"{t}/broken.jsonl", f"{t}/broken.jsonl:2: not a JSON object"),
        "jsonl type": (f"{t}/num.jsonl", f"{t}/num.jsonl:1: field 'text' is int, expected"),
        "parquet field": (f"{t}/rows.parquet", f"{t}/rows.parquet: no column 'text' (it has: "),
        "parquet type": (f"{t}/ints.parquet", f"{t}/ints.parquet: column 'text' is int64"),
        "gzip": (f"{t}/bad.txt.gz", f"{t}/bad.txt.gz: unreadable gzip"),
        "pretokenized": (f"{t}/ids.npy", f"{t}/ids.npy: pre-tokenized ids (.npy) are not text"),
    }


def test_each_bad_input_is_one_line_from_validate_and_run_with_nothing_started(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cases = bad_cases(tmp_path)
    cases["text_field on text"] = (f"{tmp_path}/plain.txt", "data.text_field: unset for text")
    for name, (path, said) in cases.items():
        data = {"corpus": "text", "path": path, "seq_len": 4, "batch_size": 2}
        if name == "text_field on text":
            data["text_field"] = "body"
        spec = tmp_path / "spec.yaml"
        spec.write_text(spec_text({"base/data": data}))
        # validate reads each file's first document; a sweep reads them all first
        for command in ("validate", "run") if name != "jsonl syntax" else ("run",):
            assert main([command, str(spec)]) == 2, (name, command)
            line = one_line(capsys)
            assert "spec.yaml:" in line and said in line, (name, line)
        nothing_started(tmp_path)


def test_validate_reads_a_good_corpus_without_tokenizing(tmp_path, capsys, monkeypatch):
    from nlsweep.data import streams

    paths = write_formats(tmp_path)
    monkeypatch.setattr(streams, "tokenize", lambda *a: pytest.fail("validate tokenized"))
    for path in paths.values():
        spec = tmp_path / "spec.yaml"
        data = {"corpus": "text", "path": path, "seq_len": 4, "batch_size": 2}
        spec.write_text(spec_text({"base/data": data}))
        assert main(["validate", str(spec)]) == 0
        assert ": ok (" in capsys.readouterr().out


def test_a_trial_trains_on_a_jsonl_corpus_and_scores_its_documents(tmp_path):
    from nlsweep.spec import load_spec
    from nlsweep.training import Trainer

    path = write_formats(tmp_path, docs_of(200, seed=4))["jsonl"]
    spec = tmp_path / "spec.yaml"
    data = {"corpus": "text", "path": path, "seq_len": 8, "batch_size": 2}
    spec.write_text(spec_text({"base/data": data}))
    m = list(Trainer(load_spec(spec, available=NO_GPU).base).run())[-1]
    assert m["val/bpb"] > 0 and m["val/bpc"] > 0
    assert 0 <= m["data/val_overlap"] <= 1


@pytest.mark.parametrize("separator", ["<eod>", "\n\n", "x"])
def test_a_separated_file_read_in_blocks_splits_like_the_whole_text(tmp_path, separator):
    from nlsweep.data import sources

    rng = random.Random(0)
    text = "".join(
        rng.choice(["ab", "é", separator, "\n", "日本", "<e", "od>"]) for _ in range(5000)
    )
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    for block in (1, 7, 4096):
        sources.BLOCK, old = block, sources.BLOCK
        try:
            got = list(sources._separated(tmp_path / "t.txt", False, separator))
        finally:
            sources.BLOCK = old
        assert got == text.split(separator), block


def mixed(**fields) -> DataConfig:
    from nlsweep.config.builder import build

    return build(DataConfig, {"corpus": "text", "seq_len": 8, "batch_size": 2, **fields})


def mixture_files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs_of(60, seed=7)))
    b.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs_of(15, seed=8)))
    return [{"path": str(a), "weight": 1.0, "name": "big"},
            {"path": str(b), "weight": 3.0, "text_field": "body"}]  # fmt: skip


def test_a_mixture_draws_training_documents_by_weight_and_pools_the_held_out(tmp_path):
    from nlsweep.data.mixture import MIXTURE_SEED
    from nlsweep.data.sources import digest_fraction

    sources = mixture_files(tmp_path)
    c = mixed(mixture=sources)
    assert [s.name for s in c.mixture] == ["big", "source1"]
    train, val = load_texts(c)
    a, b = docs_of(60, seed=7), docs_of(15, seed=8)
    held = [d for d in a + b if digest_fraction(d) < 0.1]
    assert val == held  # each source's held-out documents, source after source
    ta = [d for d in a if d not in held]
    tb = [d for d in b if d not in held]
    assert len(train) == len(ta) + len(tb)
    # the documented rule, by hand: Python's random.choices with the seed, cycling
    rng, pos, want = random.Random(MIXTURE_SEED), [0, 0], []
    for _ in range(len(train)):
        i = rng.choices([0, 1], weights=[1.0, 3.0])[0]
        want.append((ta, tb)[i][pos[i] % len((ta, tb)[i])])
        pos[i] += 1
    assert train == want
    share = sum(d in set(tb) for d in train) / len(train)
    assert 0.6 < share < 0.9  # about 3/4 from the small source, which repeats


def test_a_mixture_streamed_equals_the_mixture_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from nlsweep.data.prepared import prepared_corpus, text_corpus

    c = mixed(mixture=mixture_files(tmp_path))
    streamed = prepared_corpus(c)
    whole = text_corpus(c, *load_texts(c), streamed.vocab)
    assert torch.equal(streamed.train.long(), whole.train.long())
    assert torch.equal(streamed.val.long(), whole.val.long())


def test_mixture_errors_name_their_key(tmp_path):
    from models.errors import ConfigError

    sources = mixture_files(tmp_path)
    with pytest.raises(ConfigError, match="path: unset with mixture"):
        mixed(mixture=sources, path="x")
    with pytest.raises(ConfigError, match="weight: a positive weight, got 0"):
        mixed(mixture=[{**sources[0], "weight": 0}])
    with pytest.raises(ConfigError, match=r"mixture\[1\].name: unique"):
        mixed(mixture=[sources[0], {**sources[1], "name": "big"}])
    with pytest.raises(ConfigError, match="mixture: unset unless corpus is text"):
        mixed(corpus="pydoc", mixture=sources)


def test_a_fifo_is_named_as_one_not_as_missing(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(DataError, match="pipe.txt is neither a regular file nor a folder"):
        load_texts(DataConfig(corpus="text", path=str(tmp_path / "pipe.txt")))
    os.mkfifo(tmp_path / "input.txt")
    with pytest.raises(DataError, match="input.txt is not a regular file"):
        load_texts(DataConfig(corpus="tinyshakespeare", path=str(tmp_path)))
