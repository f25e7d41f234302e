"""Seeding for reproducible runs: same config, seed and machine → bit-identical models and metrics.

Everything random in a run happens inside :func:`seeded`: the new task head that ``from_pretrained``
initialises, the learned width projections of a distiller, dropout and the data order. The training
loop reseeds itself at its start (accelerate's ``set_seed``), but models are built *before* it, so each
pipeline stage and each command runs its model construction under :func:`seeded` as well.

:func:`seeded` forks the random number generators (``torch.random.fork_rng``, plus Python's and
NumPy's states) so a caller's own random state is left exactly as it was — calling
``compresskit.compress`` does not change what ``torch.rand`` returns afterwards in the caller's code.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

#: Seeds must fit NumPy's legacy seeding (0 ≤ seed < 2**32), which accelerate's ``set_seed`` also calls.
SEED_RANGE = (0, 2**32 - 1)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with Python, NumPy and torch (CPU and every CUDA device) seeded with ``seed``.

    The previous random states are restored on exit. ``seed`` must lie in :data:`SEED_RANGE`
    (the strategy's ``seed`` is checked there by the preflight; a value outside raises ``ValueError``
    from NumPy here).
    """
    from accelerate.utils import set_seed

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            set_seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
