"""Data: three sources give the same text; EOS ends every document; no token is lost; the cache is reused."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from lmlab.data import DataError, collate, document_rows, load_splits, packed_rows, strided_rows
from lmlab.data import tokenizer as tokenizer_mod, tokens as tokens_mod
from lmlab.data.sources import documents, read_split, split_text, word_count
from tests.conftest import CORPUS, MINI, WT2_RAW, compose_config, needs_mini, needs_wt2_raw

CONFIG = "wikitext-2-raw-v1"
HUB_FILES = {"train": "wiki.valid.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}


def data_cfg(**kw):
    base = {"name": "wikitext2", "hub_id": "Salesforce/wikitext", "hub_config": CONFIG, "local_dir": None,
            "cache_dir": "unused", "packing": True}
    return OmegaConf.create({**base, **kw})


def tok_cfg(vocab_size=512):
    return OmegaConf.create({"kind": "bpe", "vocab_size": vocab_size})


@pytest.fixture(scope="module")
def hub_layout(tmp_path_factory):
    """The hub's parquet layout, built from the official raw files: blank lines are "" rows."""
    root = tmp_path_factory.mktemp("hub")
    (root / CONFIG).mkdir()
    for split, name in HUB_FILES.items():
        lines = (WT2_RAW / name).read_text(encoding="utf-8").splitlines(keepends=True)
        rows = ["" if line == " \n" else line for line in lines]
        pq.write_table(pa.table({"text": rows}), root / CONFIG / f"{split}-00000-of-00001.parquet")
    configs = "\n".join(f"  - split: {s}\n    path: {CONFIG}/{s}-*" for s in HUB_FILES)
    (root / "README.md").write_text(f"---\nconfigs:\n- config_name: {CONFIG}\n  data_files:\n{configs}\n---\n")
    return root


@needs_wt2_raw
def test_parquet_folder_reads_the_same_lines_as_the_raw_files(hub_layout):
    lines = read_split(data_cfg(local_dir=str(hub_layout)), "test")
    assert lines == (WT2_RAW / "wiki.test.raw").read_text(encoding="utf-8").splitlines(keepends=True)
    assert word_count(lines) == 245_569  # the WikiText-2/103 test word count used for word-level perplexity


@needs_wt2_raw
def test_hub_id_goes_through_load_dataset(hub_layout):
    # load_dataset takes a repository id or a folder in the same layout: the hub code path, offline.
    lines = read_split(data_cfg(hub_id=str(hub_layout)), "validation")
    assert len(lines) == 3760 and word_count(lines) == 217_646


@needs_mini  # WikiText's own files: articles start at their ` = Title = ` lines
def test_raw_folder_reads_articles():
    lines = read_split(data_cfg(local_dir=str(MINI)), "train")
    docs = documents(lines)
    assert len(docs) == 62  # the mini train split holds 62 articles
    assert all(d.lstrip(" \n").startswith("= ") for d in docs)
    assert "".join(docs) == "".join(lines)  # rebuilding articles loses no character


def test_missing_and_misshapen_folders_are_reported(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        read_split(data_cfg(local_dir=str(tmp_path / "nope")), "train")
    (tmp_path / "wiki.train.raw").write_text(" = A = \n")
    with pytest.raises(DataError, match="no validation/test split"):
        read_split(data_cfg(local_dir=str(tmp_path)), "train")


def test_tokens_eos_and_cache(monkeypatch):
    cfg = compose_config(CORPUS).data
    tok, splits = load_splits(cfg, tok_cfg())
    for name, split in splits.items():
        docs = split_text(cfg, name).documents
        stream = np.asarray(split.tokens)
        ends = np.flatnonzero(stream == tok.eos_id)
        assert len(ends) == len(docs) == split.n_docs and ends[-1] == len(stream) - 1
        # No token lost or added between tokenized documents and the cached stream.
        assert len(stream) == sum(len(ids) + 1 for ids in tok.encode_batch(docs))
        assert tok.decode(stream[:ends[0]].tolist()) == docs[0]
    # The second load reuses the cache: tokenizing again would fail.
    monkeypatch.setattr(tokens_mod, "_tokenize", lambda *a: pytest.fail("re-tokenized a cached split"))
    monkeypatch.setattr(tokenizer_mod, "train_bpe", lambda *a: pytest.fail("retrained a cached tokenizer"))
    tok2, again = load_splits(cfg, tok_cfg())
    assert np.array_equal(again["test"].tokens, splits["test"].tokens)


def predicted(tokens, rows):
    """Indices of the tokens each row scores, via collate: what the loss actually sees."""
    out = []
    batch = collate(tokens, rows, eos_id=0)
    for r, (start, _, _) in enumerate(rows):
        scored = np.flatnonzero(batch["y"][r].numpy() != -100)
        assert np.array_equal(batch["y"][r].numpy()[scored], tokens[start + 1 + scored])
        out.extend((start + 1 + scored).tolist())
    return out


@pytest.mark.parametrize("n", [2, 33, 64, 65, 100, 1000])
def test_every_token_is_predicted_exactly_once(n):
    rng = np.random.default_rng(n)
    tokens = rng.integers(1, 50, n)
    tokens[rng.choice(n, size=max(1, n // 20), replace=False)] = 0  # EOS
    tokens[-1] = 0
    everything = list(range(1, n))
    assert sorted(predicted(tokens, packed_rows(n, 32))) == everything
    assert sorted(predicted(tokens, document_rows(tokens, 0, 32))) == everything
    assert sorted(predicted(tokens, strided_rows(n, 32, 8))) == everything
    assert (packed_rows(n, 32)[:, 1] - packed_rows(n, 32)[:, 0]).max() <= 33


def test_gpt2_tokenizer_is_gpt2s_or_a_clear_error_offline():
    from lmlab.data import Tokenizer

    try:
        tok = Tokenizer({"kind": "gpt2"})
    except DataError as e:  # no network and no tiktoken cache: the usual case here
        assert "tokenizer=gpt2" in str(e) and "tokenizer=bpe" in str(e)
    else:
        assert (tok.eos_id, tok.vocab_size) == (50256, 50257)
