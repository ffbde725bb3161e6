"""streamfit: softmax models over corpora larger than memory, without backpropagation.

Stages, one module each: reading → featurize → kernels / accumulate → stats (format,
merge) → solve (explicit solution) → model (weights files, scoring) → evaluate.
"""
__version__ = "0.1.0"

from .count.accumulate import Accumulator, accumulate  # noqa: E402
from .errors import FormatError, InputError, StreamfitError  # noqa: E402
from .model.weights import Model, load_model  # noqa: E402
from .solve.explicit import finalize  # noqa: E402
from .count.stats import Statistics, load as load_stats, merge, save as save_stats  # noqa: E402

__all__ = ["Accumulator", "accumulate", "Statistics", "load_stats", "save_stats", "merge",
           "finalize", "Model", "load_model",
           "StreamfitError", "InputError", "FormatError", "__version__"]
