"""CompressionReport: per-module costs, reconstruction error, totals, table and JSON."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from compresskit import dense_cost
from compresskit.registry import Registry
from compresskit.walker import decompose


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 6)
        self.up = nn.Linear(6, 10)
        self.down = nn.Linear(10, 6)
        self.odd = nn.Linear(6, 1)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


def _report(registry: Registry):  # type: ignore[no-untyped-def]
    net = _Net()
    reference = {name: module.weight.detach().clone() for name, module in net.named_children()}
    groups = [
        {
            "name": "mlp",
            "types": ["Linear"],
            "decomposition": "low_rank",
            "options": {"rank": 2},
            "exclude": ["down"],
        },
    ]
    return net, reference, decompose(net, groups, registry=registry)


def test_relative_error_is_the_frobenius_tail_of_the_singular_values(registry: Registry) -> None:
    _, reference, report = _report(registry)
    singular = torch.linalg.svdvals(reference["up"].double())
    expected = float(singular[2:].norm() / singular.norm())
    assert report.errors["up"] == pytest.approx(expected, rel=1e-5)


def test_costs_per_module_and_totals(registry: Registry) -> None:
    _, _, report = _report(registry)
    data = report.to_dict()
    up = next(m for m in data["modules"] if m["name"] == "up")
    assert up["before"] == dense_cost(nn.Linear(6, 10)).to_dict()
    assert up["after"]["params"] == 2 * (10 + 6) + 10
    totals = data["totals"]
    assert totals["params_before"] == sum(m["before"]["params"] for m in data["modules"])
    assert totals["model_params_before"] == 11 * 6 + 6 * 10 + 10 + 10 * 6 + 6 + 6 + 1
    assert (
        totals["model_params_after"]
        == totals["model_params_before"] - totals["params_before"] + totals["params_after"]
    )
    assert "(2n-1)*m per token" in data["counting_rule"] and "128 tokens" in data["counting_rule"]
    assert json.loads(report.to_json()) == json.loads(json.dumps(data))


def test_skipped_and_excluded_modules_carry_their_reasons(registry: Registry) -> None:
    _, _, report = _report(registry)
    assert [(s.name, s.reason) for s in report.plan.excluded] == [("down", "matched `exclude`")]
    (skipped,) = report.plan.skipped
    assert skipped.name == "odd" and "rank 2 is larger than possible" in skipped.reason


def test_table_is_aligned_and_lists_everything(registry: Registry) -> None:
    _, _, report = _report(registry)
    text = report.format()
    table = text.split("\n\n")[0].splitlines()
    rule = table[1]
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    assert len(spans) == 9
    for row in table[2:]:  # numeric columns are right-aligned under their rule
        for start, end in spans[4:8]:
            assert row[end - 1] != " " and row[start - 1] == " ", row
    assert any(line.startswith("up ") for line in table) and table[-1].startswith("total")
    assert "skipped:" in text and "odd" in text and "excluded:" in text and "matched `exclude`" in text
    assert "counting rule:" in text and "model parameters:" in text
