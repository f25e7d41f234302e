"""Registers the ``block_diagonal`` decomposition and the ``blockdiag-info`` command.

This module is what the entry point ``blockdiag = "compresskit_blockdiag.plugin"`` names. It uses only
compresskit's public API, exactly as a plugin in its own repository would.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import compresskit
from compresskit import Cost, DecompositionError, dense_bias, dense_weight, hookimpl, linear_shape


class BlockDiagonalLinear(nn.Module):
    """y = blockdiag(W_1, ..., W_k) x + b: k independent (m/k)×(n/k) blocks.

    Parameters fall from m·n to m·n/k; FLOPs from (2n−1)·m to (2n/k−1)·m per token.
    """

    def __init__(self, out_features: int, in_features: int, blocks: int, bias: bool) -> None:
        super().__init__()
        self.blocks = blocks
        self.weight = nn.Parameter(torch.empty(blocks, out_features // blocks, in_features // blocks))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.reshape(*x.shape[:-1], self.blocks, -1)
        y = torch.einsum("...ki,koi->...ko", chunks, self.weight).reshape(*x.shape[:-1], -1)
        return y + self.bias if self.bias is not None else y

    def dense_weight(self) -> torch.Tensor:
        return torch.block_diag(*self.weight.unbind(0))

    def to_dense(self) -> nn.Linear:
        weight = self.dense_weight()
        dense = nn.Linear(weight.shape[1], weight.shape[0], bias=self.bias is not None)
        dense.to(weight)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


@dataclass(frozen=True)
class BlockDiagonalOptions:
    """``blocks``: how many diagonal blocks to keep (must divide both dimensions)."""

    blocks: int = 2


class BlockDiagonal(compresskit.Decomposition):
    """Keep only the k diagonal blocks of each weight matrix."""

    name = "block_diagonal"
    Options = BlockDiagonalOptions
    module_types = ("Linear",)

    def make_spec(self, module: nn.Module, name: str) -> dict[str, Any]:
        out_features, in_features = linear_shape(module)
        blocks = self.options.blocks
        if blocks < 1 or out_features % blocks or in_features % blocks:
            raise DecompositionError(
                f"{name}: {out_features}x{in_features} cannot be split into {blocks} diagonal blocks"
            )
        return {"out_features": out_features, "in_features": in_features, "blocks": blocks}

    def build(self, module: nn.Module, spec: Mapping[str, Any], *, initialize: bool = True) -> nn.Module:
        weight, bias = dense_weight(module), dense_bias(module)
        new = BlockDiagonalLinear(
            spec["out_features"], spec["in_features"], spec["blocks"], bias is not None
        ).to(device=weight.device, dtype=weight.dtype)
        if initialize:
            with torch.no_grad():
                rows = weight.chunk(spec["blocks"], dim=0)
                for k, row in enumerate(rows):
                    new.weight[k].copy_(row.chunk(spec["blocks"], dim=1)[k])
                if bias is not None and new.bias is not None:
                    new.bias.copy_(bias)
        return new

    def compressed_cost(self, module: nn.Module, spec: Mapping[str, Any], tokens: int = 128) -> Cost:
        m, n, k = spec["out_features"], spec["in_features"], spec["blocks"]
        bias = m if dense_bias(module) is not None else 0
        return Cost(params=m * n // k + bias, flops=(2 * n // k - 1) * m * tokens)

    @classmethod
    def lossless_options(cls, module: nn.Module) -> dict[str, Any] | None:
        return {"blocks": 1}


class BlockDiagInfo(compresskit.Command):
    """Print how many parameters block-diagonal compression keeps for a given matrix."""

    name = "blockdiag-info"
    help = "parameters kept by the block_diagonal decomposition for an m x n matrix"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("rows", type=int)
        parser.add_argument("cols", type=int)
        parser.add_argument("--blocks", type=int, default=2)

    def run(self, args: argparse.Namespace, context: Any) -> int:
        kept = args.rows * args.cols // args.blocks
        print(f"{args.rows}x{args.cols} with {args.blocks} blocks keeps {kept:,} weights")
        return 0


@hookimpl
def compresskit_register_decompositions() -> list[type[compresskit.Decomposition]]:
    return [BlockDiagonal]


@hookimpl
def compresskit_register_commands() -> list[type[compresskit.Command]]:
    return [BlockDiagInfo]
