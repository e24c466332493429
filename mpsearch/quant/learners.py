"""The learners a run applies, chosen by name: the one module that knows every :class:`Learner`.

It sits above :mod:`mpsearch.quant.reconstruct` and :mod:`mpsearch.quant.qat`, which build on the seam in
:mod:`mpsearch.quant.learned`, so the seam never imports its implementations.
"""

from __future__ import annotations

from mpsearch.errors import MPSearchError
from mpsearch.quant.learned import Learner
from mpsearch.quant.qat import QatKd, QatSettings
from mpsearch.quant.reconstruct import Reconstruction, ReconstructionSettings


def make_learners(ptq: str = "none", *, lsq: bool = False, iters: int = 300, qat_epochs: int = 0,
                  qat_lr: float = 1e-4, seed: int = 0, lsq_weights: bool = False,
                  fisher: bool = False) -> list[Learner]:
    """The learners a run applies in turn: ``adaround`` or ``brecq`` (or none), then QAT-KD if ``qat_epochs``.

    ``lsq_weights`` (learned weight steps) needs ``adaround`` or ``brecq``; ``fisher`` applies to ``brecq``
    only (AdaRound reconstructs plain layer outputs)."""
    out: list[Learner] = []
    if lsq_weights and ptq == "none":
        raise MPSearchError("LSQ weight steps are learned inside reconstruction; use ptq adaround or brecq")
    if ptq != "none":
        granularity = {"adaround": "layer", "brecq": "block"}.get(ptq)
        if granularity is None:
            raise MPSearchError(f"unknown ptq method {ptq!r}; use none, adaround or brecq")
        out.append(Reconstruction(granularity, ReconstructionSettings(
            iters=iters, lsq=lsq, seed=seed, lsq_weights=lsq_weights, fisher=fisher and granularity == "block")))
    if qat_epochs > 0:
        out.append(QatKd(QatSettings(epochs=qat_epochs, lr=qat_lr, lsq=lsq, seed=seed)))
    return out


__all__ = ["make_learners"]
