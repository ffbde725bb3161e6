"""Option defaults and choices that the command line shows before it does any work.

Only the standard library is imported here, so that building the parser — every `streamfit
COMMAND --help`, and a bad option refused — loads neither numpy's stages nor numba, scipy,
pyarrow or Dask (tests/test_structure.py checks it). The modules that use these values
import them from here; they stay importable under their old homes too.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .errors import StreamfitError

DEFAULT_BATCH_ROWS = 4096       # io.parquet: rows per record batch read
DEFAULT_MEMORY = 2 << 30        # count.out_of_core: accumulate / merge budget in bytes
CHECKPOINT_SECONDS = 60.0       # count.out_of_core: spill and journal at least this often
FORMS = ("conditional", "paper", "calibrated")  # solve.forms: explicit-solution forms
ENCODINGS = ("normalised", "complement")        # data.featurize: how feature rows are read
DEFAULT_SMOOTHING = 0.01        # solve.forms
NGRAM_FORMS = ("kneser-ney", "blocks")          # solve.ngram
INSTALL_HINT = "pip install 'streamfit[dask]'"  # distributed
MERGE_FAN_IN = 16               # distributed: shards merged by one task
UNIT_VALUES = 16_000_000        # distributed: values (tokens, feature values) a unit, at most ...
MIN_UNITS = 4                   # ... and fewer on a small corpus, so that it still makes this many
SUBSPACE_METHODS = ("random-bases", "dldr")     # train.subspace
PHASE_METHODS = ("sgd", "adam", "gis")          # train.subspace: dldr's snapshot phase


@dataclass
class SubspaceOptions:
    """Settings of the subspace methods (the others ignore them)."""

    dims: int = 40               # d: directions per step (random-bases), basis size (dldr)
    compartments: int = 1        # random-bases: row blocks of W with their own directions
    redraw: bool = True          # random-bases: new directions every step; False: one fixed basis
    workers: int = 1             # random-bases: shared-seed workers (batch i → worker i mod N)
    processes: bool = True       # run the workers as processes; False: simulate them here
    phase: str = "sgd"           # dldr: method of the snapshot phase
    phase_passes: int | None = None  # dldr: passes of the snapshot phase (default: half of
    #                                  all passes; the rest are P-BFGS)
    snapshot_every: int = 10     # dldr: mini-batch steps between snapshots (gis: passes)
    pbfgs_batch: int = 1024      # dldr: P-BFGS mini-batch size

    def resolved(self, method: str, passes: int) -> "SubspaceOptions":
        """These options checked for `method`, with defaults that depend on `passes` filled in."""
        if method == "dldr" and self.phase_passes is None:
            return replace(self, phase_passes=max(1, passes // 2)).resolved(method, passes)
        if self.dims < 1:
            raise StreamfitError(f"--dims must be at least 1, not {self.dims}")
        if method == "random-bases":
            if not 1 <= self.compartments <= self.dims:
                raise StreamfitError(f"--compartments must be between 1 and --dims ({self.dims}), "
                                     f"not {self.compartments}")
            if self.workers < 1:
                raise StreamfitError(f"--workers must be at least 1, not {self.workers}")
        if method == "dldr":
            if self.phase not in PHASE_METHODS:
                raise StreamfitError(f"the dldr phase must be one of {PHASE_METHODS}, not "
                                     f"{self.phase!r}")
            if not 1 <= self.phase_passes < passes:
                raise StreamfitError(f"dldr needs 1 ≤ --phase-passes < --passes (the passes after "
                                     f"the snapshot phase train the subspace), got "
                                     f"{self.phase_passes} of {passes}")
            if self.snapshot_every < 1 or self.pbfgs_batch < 1:
                raise StreamfitError("--snapshot-every and --pbfgs-batch must be at least 1")
        return self

    def settings(self, method: str) -> dict:
        keys = {"random-bases": ("dims", "compartments", "redraw", "workers"),
                "dldr": ("dims", "phase", "phase_passes", "snapshot_every", "pbfgs_batch")}[method]
        return {k: v for k, v in asdict(self).items() if k in keys}
