"""Functions the lmlab_* lm-evaluation-harness tasks name: the test documents of an lmlab run, and
per-document word and byte counts. WikiText's detokenizer and counts are the harness's own."""
from __future__ import annotations

from lm_eval.tasks.wikitext.preprocess_wikitext import process_results as wikitext_process_results  # noqa: F401
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer  # noqa: F401

from lmlab.data.sources import corpus_kind
from lmlab.lmeval import run_data_config, scored_documents


def run_test_split(checkpoint: str, limit: int | None = None, **_metadata):
    """The test split the run behind `checkpoint` was scored on, one row per document (`page`, as
    in EleutherAI/wikitext_document_level), with lmlab's word and byte counts."""
    import datasets

    rows = scored_documents(run_data_config(checkpoint), limit)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def run_wikitext_test_split(checkpoint: str, limit: int | None = None, **_metadata):
    """run_test_split for the harness's wikitext task, which undoes WikiText's tokenization (` @-@ `,
    ` , `): refused for a run on another corpus, where its score would mean nothing."""
    kind = corpus_kind(run_data_config(checkpoint))
    if kind != "wikitext":
        raise ValueError(f"lmlab_wikitext scores WikiText runs only; {checkpoint} was trained on data.kind={kind}: "
                         "use lmlab_text")
    return run_test_split(checkpoint, limit)


def lmlab_process_results(doc, results):
    (loglikelihood,) = results
    return {"word_perplexity": (loglikelihood, doc["n_words"]), "byte_perplexity": (loglikelihood, doc["n_bytes"]),
            "bits_per_byte": (loglikelihood, doc["n_bytes"])}


def page(doc) -> str:
    return doc["page"]
