"""Full-batch L-BFGS on the mean cross-entropy + l2/2·‖W‖², one streaming pass per
function evaluation: the reference optimum of the single-layer model."""
from __future__ import annotations

import numpy as np
import scipy.optimize


class _PassesSpent(Exception):
    """Raised inside scipy's objective when the passes asked for are spent."""


def lbfgs(w, pass_fn, passes, l2, record, checkpoint, start_pass):
    """scipy's L-BFGS-B; every function evaluation is one streaming pass, exactly `passes`
    of them at most. Returns the best point evaluated."""
    if passes <= 0:
        return w
    shape = w.shape
    count = [start_pass]
    observed: list[np.ndarray] = []
    best: list = [np.inf, w]

    def fun(flat):
        if count[0] - start_pass == passes:
            raise _PassesSpent  # scipy may evaluate once more than maxfun
        cur = flat.reshape(shape)
        r = pass_fn(cur, True, not observed)
        if not observed:
            observed.append(r.observed)
        grad = (r.expected - observed[0]) / r.n + l2 * cur
        objective = r.mean_loss + 0.5 * l2 * float((cur * cur).sum())
        count[0] += 1
        if objective < best[0]:
            best[:] = [objective, cur.copy()]
        record(count[0], cur, r, {"objective": objective})
        checkpoint(count[0], cur, {})
        return objective, grad.ravel()

    try:
        scipy.optimize.minimize(fun, w.ravel(), jac=True, method="L-BFGS-B",
                                options={"maxfun": passes, "maxiter": passes, "gtol": 1e-10,
                                         "ftol": 1e-14})
    except _PassesSpent:
        pass
    return best[1]
