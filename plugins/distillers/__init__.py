"""Built-in distillers: ``two_stage_kd`` (KroneckerBERT), ``logits_kd`` (Hinton) and ``intermediate_kd``."""

from __future__ import annotations

import compresskit

from .single_stage import IntermediateKD, LogitsKD
from .two_stage_kd import TwoStageKD


@compresskit.hookimpl
def compresskit_register_distillers() -> list[type[compresskit.Distiller]]:
    return [TwoStageKD, LogitsKD, IntermediateKD]
