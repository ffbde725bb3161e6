"""The package internals that the tools use beyond streamfit's public API, in one table.

A tool that needs more than ``import streamfit`` offers takes it from here
(``from internals import iter_examples``), so that a module moving inside the package is a
one-line edit of ``NAMES`` or ``MODULES`` below and nothing else; what the public API offers
(``streamfit.evaluate``, ``refine``, ``grow``, ``accumulate_into``, ...) is imported from
``streamfit`` itself, not from here. A name is imported on first use (PEP 562 ``__getattr__``): a tool pays only for the
modules it touches, and the corpus tools do not load the training code.
"""
from __future__ import annotations

import importlib

# module -> the names the tools take from it
NAMES = {
    "streamfit.io.files": "atomic_directory",
    "streamfit.io.parquet": "open_parquet resolve_paths DEFAULT_BATCH_ROWS",
    "streamfit.data.featurize": "FeatureRows concat_examples feature_examples slice_examples",
    "streamfit.count.accumulate": "CountTable PATHS",
    "streamfit.count.stats": "checksum_of",
    "streamfit.count.out_of_core": "parse_size",
    "streamfit.solve.forms": "DEFAULT_SMOOTHING",
    "streamfit.model.evaluate": "iter_examples",
    "streamfit.model.ngram": "context_rows",
    "streamfit.solve.ngram": "token_batches",
    "streamfit.train.core": "full_pass dense_parameters heldout_loss",
    "streamfit.train.subspace": "SubspaceOptions",
    "streamfit.train.grow": "Layers growth_pass",
}
# name -> a module the tools use whole
MODULES = {
    "count_reference": "streamfit.count.reference",    # the numpy twins of the counting kernels
    "checkpoints": "streamfit.train.refine",           # whose save_checkpoint bench_quality times
}
HOME: dict[str, tuple[str, str | None]] = {
    **{name: (module, name) for module, names in NAMES.items() for name in names.split()},
    **{name: (module, None) for name, module in MODULES.items()},
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
