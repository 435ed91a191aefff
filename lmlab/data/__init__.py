"""Text -> documents -> tokenizer -> cached token streams -> rows -> batches. Knows nothing of the model."""
from lmlab.data.batches import (IGNORE, Sampler, collate, document_rows, packed_rows, scored_targets,
                                strided_rows, with_seed_bugs)
from lmlab.data.sources import DataError
from lmlab.data.tokenizer import Tokenizer
from lmlab.data.tokens import Split, load_splits

__all__ = ["IGNORE", "DataError", "Sampler", "Split", "Tokenizer", "collate", "document_rows",
           "load_splits", "packed_rows", "scored_targets", "strided_rows", "with_seed_bugs"]
