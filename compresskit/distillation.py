"""The Distiller and Loss base classes.

A :class:`Loss` compares what a student and a teacher produced on a batch (logits, hidden states,
pre-softmax attention scores, ...) and returns a scalar. A :class:`Distiller` trains a student against
one or more teachers with a set of weighted losses. Both are registered through plugins.
"""

from __future__ import annotations

from typing import ClassVar

from compresskit.component import Component


class Loss(Component):
    """Base class of distillation and task losses (``compresskit_register_losses``).

    ``requires`` names the outputs the loss reads (e.g. ``{"hidden_states"}``) so that a strategy that
    asks for an output the model cannot produce fails before training starts.
    """

    requires: ClassVar[frozenset[str]] = frozenset()


class Distiller(Component):
    """Base class of distillers (``compresskit_register_distillers``)."""
