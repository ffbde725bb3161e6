"""streamfit: softmax models over corpora larger than memory, without backpropagation.

The package follows the data flow, one subpackage per stage, imports running one way:
io (Parquet, crash-safe files) → data (featurize) → count (kernels, accumulate, spill,
statistics and merge) → model (weights files, scoring, evaluate) → solve (explicit
solution, calibration) → train (refine, newton, subspace, grow) → distributed → cli.

The public API below is imported on first use, so `import streamfit` stays cheap: a command
pays only for the stages it runs.
"""
from __future__ import annotations

import importlib

from .errors import FormatError, InputError, OptionError, StreamfitError

__version__ = "0.1.0"

_API = {
    "Accumulator": "count.accumulate",
    "accumulate": "count.accumulate",       # paths → Statistics in memory
    "accumulate_into": "count.out_of_core",  # paths → a statistics directory, out of core, resumable
    "Statistics": "count.stats",
    "load_stats": ("count.stats", "load"),
    "save_stats": ("count.stats", "save"),
    "merge": "count.stats",                  # Statistics objects → their exact sum, in memory
    "merge_into": "count.out_of_core",       # statistics directories → one, bounded memory
    "finalize": "solve.explicit",
    "finalize_ngram": "solve.ngram",         # n-gram statistics → Kneser-Ney or the block model
    "refine_ngram": "train.ngram",           # an n-gram model → its maximum-entropy refinement
    "NgramModel": "model.ngram",
    "Model": "model.weights",
    "load_model": "model.weights",
    "evaluate": "model.evaluate",
    "predict": "model.evaluate",
    "refine": "train.refine",
    "grow": "train.grow",
    "score": "model.score",                  # per-document scores of Parquet files → a folder
    "tokenize": "data.tokenize",             # text files / a Parquet text column → token Parquet
    "load_tokenizer": "data.text",
}

__all__ = [*_API, "StreamfitError", "InputError", "OptionError", "FormatError", "__version__"]


def __getattr__(name: str):
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'streamfit' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
