"""The package internals that the tools use beyond streamfit's public API, in one table.

A tool that needs more than ``import streamfit`` offers takes it from here
(``from internals import iter_examples``), so that a module moving inside the package is a
one-line edit of ``HOME`` below and nothing else. A name is imported on first use (PEP 562
``__getattr__``): a tool pays only for the modules it touches, and the corpus tools do not
load the training code.
"""
from __future__ import annotations

import importlib

# name -> (module, attribute); attribute None: the module itself.
HOME: dict[str, tuple[str, str | None]] = {
    # io
    "atomic_directory": ("streamfit.io.files", "atomic_directory"),
    "open_parquet": ("streamfit.io.parquet", "open_parquet"),
    "resolve_paths": ("streamfit.io.parquet", "resolve_paths"),
    "DEFAULT_BATCH_ROWS": ("streamfit.io.parquet", "DEFAULT_BATCH_ROWS"),
    # data
    "Examples": ("streamfit.data.featurize", "Examples"),
    "FeatureRows": ("streamfit.data.featurize", "FeatureRows"),
    "feature_examples": ("streamfit.data.featurize", "feature_examples"),
    "slice_examples": ("streamfit.data.featurize", "slice_examples"),
    # count
    "CountTable": ("streamfit.count.accumulate", "CountTable"),
    "count_reference": ("streamfit.count.reference", None),
    "checksum_of": ("streamfit.count.stats", "checksum_of"),
    "accumulate_into": ("streamfit.count.out_of_core", "accumulate_into"),
    "parse_size": ("streamfit.count.out_of_core", "parse_size"),
    # solve
    "DEFAULT_SMOOTHING": ("streamfit.solve.explicit", "DEFAULT_SMOOTHING"),
    # model
    "evaluate": ("streamfit.model.evaluate", "evaluate"),
    "iter_examples": ("streamfit.model.evaluate", "iter_examples"),
    # train
    "refine": ("streamfit.train.refine", "refine"),
    "full_pass": ("streamfit.train.refine", "full_pass"),
    "dense_parameters": ("streamfit.train.refine", "dense_parameters"),
    "checkpoints": ("streamfit.train.refine", None),   # the module whose save_checkpoint is timed
    "SubspaceOptions": ("streamfit.train.subspace", "SubspaceOptions"),
    "grow": ("streamfit.train.grow", "grow"),
    # several machines
    "distributed": ("streamfit.distributed", None),
}


def __getattr__(name: str):
    try:
        module, attribute = HOME[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(HOME)
