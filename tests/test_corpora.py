"""Any corpus: data=text (a folder of .txt/.jsonl) and data=hub (anything datasets loads), offline on
local files, with non-English UTF-8 text; splits carved deterministically when the corpus has none."""
import json

import numpy as np
import pytest

from lmlab.data import DataError, load_splits
from lmlab.data import readers, sources
from lmlab.data.sources import holdout_size, source_key, split_text
from lmlab.errors import ConfigError
from lmlab.validation import validate
from tests.conftest import REPO, TINY, compose_config, corpus_verses, run_cli

# Public-domain verse in five scripts: multi-byte UTF-8 in every document.
POEMS = {
    "pushkin.txt": "Мороз и солнце; день чудесный!\nЕщё ты дремлешь, друг прелестный —\nПора, красавица, проснись!\n",
    "li_bai.txt": "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n",
    "homer.txt": "Ἄνδρα μοι ἔννεπε, Μοῦσα, πολύτροπον, ὃς μάλα πολλὰ\nπλάγχθη, ἐπεὶ Τροίης ἱερὸν πτολίεθρον ἔπερσε·\n",
    "basho.txt": "古池や\n蛙飛び込む\n水の音\n",
    "goethe.txt": "Über allen Gipfeln\nIst Ruh’,\nIn allen Wipfeln\nSpürest du\nKaum einen Hauch;\n",
}


def text_cfg(folder, **kw):
    return compose_config(["data=text", f"data.local_dir={folder}", *[f"data.{k}={v}" for k, v in kw.items()]]).data


@pytest.fixture
def pool(tmp_path):
    """Five .txt poems, a .jsonl of 15 one-line documents in a subfolder, and files to ignore."""
    tmp_path = tmp_path / "corpus"
    tmp_path.mkdir()
    for name, text in POEMS.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "more").mkdir()
    lines = [json.dumps({"text": f"Strophe {i}: Œuvre n°{i} — ça déborde {'é' * i}", "id": i}, ensure_ascii=False)
             for i in range(15)]
    (tmp_path / "more" / "lines.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("not a document")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("not a document either")
    return tmp_path


def test_a_folder_is_carved_into_three_disjoint_splits_the_same_way_every_time(pool):
    cfg = text_cfg(pool, holdout=0.1)  # 20 documents: 2 each for validation and test
    texts = {s: split_text(cfg, s) for s in ("train", "validation", "test")}
    docs = {s: t.documents for s, t in texts.items()}
    assert [len(docs[s]) for s in ("train", "validation", "test")] == [16, 2, 2]
    everything = sorted(POEMS.values()) + sorted(
        f"Strophe {i}: Œuvre n°{i} — ça déborde {'é' * i}" for i in range(15))
    assert sorted(docs["train"] + docs["validation"] + docs["test"]) == sorted(everything)
    assert {s: split_text(cfg, s).documents for s in docs} == docs  # deterministic
    for t in texts.values():  # whitespace words; UTF-8 bytes, not characters
        assert t.n_words == sum(len(d.split()) for d in t.documents)
        assert t.n_bytes == sum(len(d.encode("utf-8")) for d in t.documents)
    assert len(POEMS["li_bai.txt"]) == 26 and len(POEMS["li_bai.txt"].encode()) == 3 * 24 + 2  # 3-byte CJK, 2 newlines
    other = text_cfg(pool, holdout=0.1, split_seed=1)
    assert split_text(other, "test").documents != docs["test"]  # the seed chooses the carving
    assert source_key(other) != source_key(cfg)


def test_holdout_is_a_fraction_or_a_count_and_at_least_one():
    assert [holdout_size(1000, h) for h in (0.05, 0.0001, 3, 3.0)] == [50, 1, 3, 3]


def test_split_subfolders_are_used_and_a_missing_one_is_carved(tmp_path):
    for split, names in {"train": ["pushkin.txt", "li_bai.txt", "homer.txt"], "test": ["basho.txt"]}.items():
        (tmp_path / split).mkdir()
        for name in names:
            (tmp_path / split / name).write_text(POEMS[name], encoding="utf-8")
    cfg = text_cfg(tmp_path, holdout=1)
    assert split_text(cfg, "test").documents == [POEMS["basho.txt"]]
    [valid] = split_text(cfg, "validation").documents
    train = split_text(cfg, "train").documents
    assert len(train) == 2 and sorted(train + [valid]) == sorted(POEMS[n] for n in ["pushkin.txt", "li_bai.txt", "homer.txt"])


def test_bad_folders_are_reported(tmp_path):
    with pytest.raises(DataError, match="holds no .txt or .jsonl file"):
        split_text(text_cfg(tmp_path), "train")
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"body": "two"}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2 is not a JSON object with a 'text' string field"):
        split_text(text_cfg(tmp_path), "train")
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    with pytest.raises(DataError, match="has 2 training documents: carving 1 for each of validation and test"):
        split_text(text_cfg(tmp_path), "train")
    (tmp_path / "b.txt").write_bytes("café\n".encode("latin-1"))
    with pytest.raises(DataError, match="b.txt is not UTF-8 text"):
        split_text(text_cfg(tmp_path), "train")


def _book(paragraphs: int, blank_lines: bool = True) -> str:
    """Chapters of numbered paragraphs (~330 characters each), separated by blank lines or not."""
    sep = "\n\n" if blank_lines else "\n"
    text = ""
    for n in range(paragraphs):
        if n % 10 == 0:
            text += f"Chapter {n // 10 + 1}{sep}"
        text += f"{n}: " + "Und es war Abend, und es war Morgen, der Tag ging hin. " * 6 + sep
    return text


def _all_documents(cfg) -> list[str]:
    return [doc for split in ("train", "validation", "test") for doc in split_text(cfg, split).documents]


@pytest.mark.parametrize("blank_lines", [True, False], ids=["paragraphs", "one line each"])
def test_a_corpus_of_one_file_is_cut_into_documents_of_at_least_2000_characters(tmp_path, blank_lines):
    book = tmp_path / "corpus" / "book.txt"
    book.parent.mkdir()
    book.write_text(_book(60, blank_lines), encoding="utf-8")
    for local_dir in (book.parent, book):  # the folder, or the file itself
        docs = _all_documents(text_cfg(local_dir))
        assert "".join(sorted(docs, key=book.read_text().index)) == book.read_text()  # every character, once
        assert len(docs) >= 8 and sum(len(doc) < 2000 for doc in docs) <= 1  # the last one may be shorter
        ends = "\n\n" if blank_lines else "\n"
        assert all(doc.endswith(ends) for doc in docs)  # cut at a blank line, or a line end where there is none


def test_split_on_cuts_every_txt_file_at_a_pattern(tmp_path):
    (tmp_path / "book.txt").write_text(_book(60), encoding="utf-8")
    cfg = text_cfg(tmp_path, split_on="'(?m)^(?=Chapter )'", holdout=1)  # a lookahead keeps each heading
    docs = _all_documents(cfg)
    assert len(docs) == 6 and all(doc.startswith("Chapter ") for doc in docs)
    assert sorted(doc[len("Chapter "):] for doc in docs) == sorted(_book(60).split("Chapter ")[1:])
    assert source_key(cfg) != source_key(text_cfg(tmp_path, holdout=1))  # the cut keys the token cache
    with pytest.raises(ConfigError, match="data.split_on: not a regular expression"):
        validate(compose_config(["data=text", f"data.local_dir={tmp_path}", "data.split_on='(unclosed'"]))
    with pytest.raises(ConfigError, match="data.split_on: cuts the .txt files of data=text"):
        validate(compose_config(["data.split_on=x"]))


def test_the_king_james_bible_is_one_document_per_chapter_with_split_on(tmp_path):
    # The embedded corpus as one book, a verse a line after its citation ("Genesis 1:1 In the ...").
    (tmp_path / "kjv.txt").write_text("".join(f"{v['citation']} {v['text']}\n" for v in corpus_verses()), encoding="utf-8")
    cfg = text_cfg(tmp_path / "kjv.txt", split_on="'(?m)^(?=.+? \\d+:1 )'")
    docs = _all_documents(cfg)
    assert len(docs) == 1189  # the chapters of the Protestant canon
    assert sum(doc.startswith("Genesis 1:1 In the beginning") for doc in docs) == 1


def test_hub_kind_reads_any_column_of_what_datasets_loads(tmp_path):
    # A local folder datasets reads like a hub repository: train.jsonl only, the text in "story".
    rows = [{"story": text, "n": i} for i, text in enumerate(POEMS.values())] * 4
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                          encoding="utf-8")
    cfg = compose_config(["data=hub", f"data.hub_id={tmp_path}", "data.holdout=2"]).data
    with pytest.raises(DataError, match=r"has no column 'text' \(it has story, n\): set data.text_column"):
        split_text(cfg, "train")
    cfg.text_column = "story"
    sizes = {s: len(split_text(cfg, s).documents) for s in ("train", "validation", "test")}
    assert sizes == {"train": 16, "validation": 2, "test": 2}
    (tmp_path / "test.jsonl").write_text(json.dumps({"story": "the hub's own test split", "n": 0}) + "\n")
    assert split_text(cfg, "test").documents == ["the hub's own test split"]  # a split it has is used
    assert len(split_text(cfg, "train").documents) == 18


def test_a_text_corpus_trains_end_to_end_and_decodes_exactly(pool, tmp_path, cache_dir, monkeypatch):
    cfg = compose_config(["data=text", f"data.local_dir={pool}", *TINY, "data.holdout=2"])
    reads = []
    read_folder = readers.text_splits
    monkeypatch.setattr(readers, "text_splits", lambda data_cfg: reads.append(1) or read_folder(data_cfg))
    tok, splits = load_splits(cfg.data, cfg.tokenizer)
    assert len(reads) == 1  # a cold cache reads and carves the folder once for all three splits
    stream = np.asarray(splits["test"].tokens)
    first_end = int(np.flatnonzero(stream == tok.eos_id)[0])
    assert tok.decode(stream[:first_end].tolist()) == split_text(cfg.data, "test").documents[0]

    run_dir = tmp_path / "run"
    r = run_cli(["data=text", f"data.local_dir={pool}", "data.holdout=2", *TINY, "train.max_steps=4",
                 "train.batch_size=2", "eval.sample_tokens=0", "logger=none", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    test = split_text(cfg.data, "test")
    nll = summary["test_loss"] * (len(stream) - 1)  # every test token but the first is scored
    # bits per byte and word-level perplexity divide by this corpus's UTF-8 bytes and whitespace words
    assert summary["test_bpb"] == pytest.approx(nll / (np.log(2) * test.n_bytes), rel=1e-9)
    assert summary["test_word_ppl"] == pytest.approx(np.exp(nll / test.n_words), rel=1e-9)
    assert summary["status"] == "done" and 0 < summary["test_bpb"] < 20


def test_hub_kind_trains_end_to_end_on_the_default_text_column_beside_others(tmp_path):
    # A local folder as a user makes one: train.jsonl whose documents are in "text", next to other fields.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [{"text": text, "name": name} for name, text in POEMS.items()] * 4
    (corpus / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                        encoding="utf-8")
    run_dir = tmp_path / "run"
    r = run_cli(["data=hub", f"data.hub_id={corpus}", "data.holdout=2", *TINY, "train.max_steps=2",
                 "train.batch_size=2", "eval.sample_tokens=0", "logger=none", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    # bits per byte and word perplexity, as for every corpus: runs compare across tokenizers by them
    assert summary["status"] == "done" and 0 < summary["test_bpb"] < 20 and summary["test_word_ppl"] > 1
    cfg = compose_config(["data=hub", f"data.hub_id={corpus}", "data.holdout=2"]).data
    splits = {s: split_text(cfg, s).documents for s in ("train", "validation", "test")}
    assert sorted(d for docs in splits.values() for d in docs) == sorted(r["text"] for r in rows)


def test_hub_kind_reads_another_column_where_a_text_column_is_beside_it(tmp_path):
    rows = [{"story": text, "text": f"title {i}"} for i, text in enumerate(POEMS.values())] * 4
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                          encoding="utf-8")
    cfg = compose_config(["data=hub", f"data.hub_id={tmp_path}", "data.holdout=2", "data.text_column=story"]).data
    docs = [d for s in ("train", "validation", "test") for d in split_text(cfg, s).documents]
    assert sorted(docs) == sorted(r["story"] for r in rows)


def wikitext_file(titles: list[str]) -> str:
    """WikiText's layout: ` = Title = ` lines start articles, every line starts with a space."""
    return "".join(f" \n = {t} = \n \n {t} is an article of {len(t)} letters . \n \n = = Section = = \n \n More on {t} . \n"
                   for t in titles)


def test_a_wikitext_folder_pools_its_articles_and_carves_whole_ones(tmp_path):
    (tmp_path / "wiki.valid.raw").write_text(wikitext_file([f"Valid{i}" for i in range(6)]))
    (tmp_path / "wiki.test.raw").write_text(wikitext_file([f"Test{i}" for i in range(4)]))
    cfg = compose_config(["data=wikitext2", f"data.local_dir={tmp_path}", "data.pool=true", "data.holdout=2"]).data
    texts = {s: split_text(cfg, s) for s in ("train", "validation", "test")}
    docs = {s: t.documents for s, t in texts.items()}
    assert [len(docs[s]) for s in docs] == [6, 2, 2]
    titles = sorted(d.split(" = ")[1] for s in docs for d in docs[s])
    assert titles == sorted([f"Valid{i}" for i in range(6)] + [f"Test{i}" for i in range(4)])  # whole, disjoint
    whole = sum(sources.word_count((tmp_path / f"wiki.{s}.raw").read_text().splitlines(keepends=True))
                for s in ("valid", "test"))
    assert sum(t.n_words for t in texts.values()) == whole  # WikiText's words: all of them, once
    assert {s: split_text(cfg, s).documents for s in docs} == docs  # deterministic
    unpooled = compose_config(["data=wikitext2", f"data.local_dir={tmp_path}"]).data
    with pytest.raises(DataError, match="no train split"):
        split_text(unpooled, "train")
    assert source_key(cfg) != source_key(compose_config(
        ["data=wikitext2", f"data.local_dir={tmp_path}", "data.pool=true", "data.holdout=3"]).data)
