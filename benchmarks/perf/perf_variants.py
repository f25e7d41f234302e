"""The models and strategies of the perf benchmark, and the child process that builds one variant.

Models: ``bert-base`` (BERT-base shapes from ``BertConfig()``, random weights, nothing downloaded),
``minilm-l6`` (the embedded default teacher, offline) and ``tiny`` (a 2-layer hidden-64 BERT for quick
checks); each as a sequence classifier with 2 labels. ``--layers N`` keeps the first N layers.

Strategies: ``dense``, the presets ``kb5`` / ``kb8`` / ``kb21``, and ``lowrank-kb8`` / ``lowrank-kb21`` /
``tt-kb8`` / ``tt-kb21``: low rank and tensor-train at the KroneckerBERT preset's parameter count,
matched per matrix group (the same ``param_ratio`` as the preset's per-matrix compression: attention
1/4 | 1/32, FFN 1/16 | 1/32, word embedding 1/8 | 1/16; tensor-train's embedding is low rank, as
``tensor_train`` handles only Linear / Conv1D).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from compresskit_plugins.kronecker.presets import ATTENTION, FFN_IN, FFN_OUT, WORD_EMBEDDING
from torch import nn

PRESETS = {"kb5": "kroneckerbert5", "kb8": "kroneckerbert8", "kb21": "kroneckerbert21"}
#: Per-matrix kept fraction of each KroneckerBERT preset: attention, FFN, word embedding.
RATIOS = {"kb8": (1 / 4, 1 / 16, 1 / 8), "kb21": (1 / 32, 1 / 32, 1 / 16)}
STRATEGIES = ("dense", "kb5", "kb8", "kb21", "lowrank-kb8", "lowrank-kb21", "tt-kb8", "tt-kb21")


def build_model(name: str, layers: int | None = None) -> nn.Module:
    """A sequence classifier for ``name`` (random weights except the real MiniLM-L6)."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    if name == "minilm-l6":
        from compresskit.plugin import default_teacher_path

        kwargs = {"num_hidden_layers": layers} if layers else {}
        return AutoModelForSequenceClassification.from_pretrained(
            default_teacher_path(), num_labels=2, **kwargs
        )
    if name == "bert-base":
        config = BertConfig(num_labels=2)
    elif name == "tiny":
        config = BertConfig(
            hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_labels=2
        )
    else:
        raise SystemExit(f"--models: unknown model {name!r}; choose bert-base, minilm-l6 or tiny.")
    if layers:
        config.num_hidden_layers = layers
    return BertForSequenceClassification(config)


def strategy_groups(strategy: str) -> Any:
    """What ``compresskit.decompose`` takes for ``strategy`` (None for dense)."""
    if strategy == "dense":
        return None
    if strategy in PRESETS:
        return PRESETS[strategy]
    kind, _, preset = strategy.partition("-")
    if kind not in ("lowrank", "tt") or preset not in RATIOS:
        raise SystemExit(f"--strategies: unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}.")
    attention, ffn, embedding = RATIOS[preset]
    linear = "low_rank" if kind == "lowrank" else "tensor_train"

    def group(name: str, types: list[str], names: str, decomposition: str, ratio: float) -> dict[str, Any]:
        return {
            "name": name,
            "types": types,
            "names": names,
            "decomposition": decomposition,
            "options": {"param_ratio": ratio},
        }

    return [
        group("attention", ["Linear"], ATTENTION, linear, attention),
        group("ffn_in", ["Linear"], FFN_IN, linear, ffn),
        group("ffn_out", ["Linear"], FFN_OUT, linear, ffn),
        group("word_embedding", ["Embedding"], WORD_EMBEDDING, "low_rank", embedding),
    ]


def build_variant(
    model_name: str, strategy: str, layers: int | None, folder: str, seq_len: int
) -> dict[str, Any]:
    """Build, decompose (timed), save and count one variant; run in a child process (peak memory)."""
    import compresskit
    from compresskit import Registry, plan_compression
    from compresskit.plugin import PLANS_ATTRIBUTE, build_replacements, swap_modules

    model = build_model(model_name, layers).eval()
    rss_model = _rss_mb()
    result: dict[str, Any] = {"strategy": strategy, "model_rss_mb": round(rss_model, 1)}
    groups = strategy_groups(strategy)
    if groups is not None:
        registry = Registry.from_plugins()
        start = time.perf_counter()
        plan = plan_compression(model, groups, registry=registry, tokens=seq_len)
        planned = time.perf_counter()
        replacements = build_replacements(model, plan, registry=registry)
        swap_modules(model, plan, replacements)
        done = time.perf_counter()
        setattr(model, PLANS_ATTRIBUTE, (plan,))
        result.update(
            plan_s=round(planned - start, 4),
            build_s=round(done - planned, 4),
            decompose_s=round(done - start, 4),
            decompose_peak_mb=round(_peak_mb() - rss_model, 1),
            flops_linear=plan.after.flops,
        )
        compresskit.save(model, folder)
    else:
        from compresskit.plugin import dense_model_flops

        result["flops_linear"] = dense_model_flops(model, seq_len)
        model.save_pretrained(folder)
    from compresskit import size_on_disk_mb
    from compresskit.plugin import count_parameters

    result.update(params=count_parameters(model), size_mb=round(size_on_disk_mb(folder), 3))
    result["flops_counted"] = counted_flops(model, seq_len)
    return result


def counted_flops(model: nn.Module, seq_len: int) -> int:
    """FLOPs of one forward at batch 1 × ``seq_len`` by ``torch.utils.flop_counter`` (every matmul)."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(0, int(model.config.vocab_size), (1, seq_len))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids)
    return int(counter.get_total_flops())


def load_variant(model_name: str, strategy: str, layers: int | None, folder: str) -> nn.Module:
    """The saved variant as a user loads it (``compresskit.load`` for compressed folders)."""
    if strategy == "dense":
        from transformers import BertForSequenceClassification

        return BertForSequenceClassification.from_pretrained(folder).eval()
    import compresskit

    return compresskit.load(folder).eval()


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 1e6


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def child_main(argv: list[str]) -> None:
    """``--build MODEL STRATEGY LAYERS FOLDER SEQ``: print the variant's JSON on the last line."""
    model_name, strategy, layers, folder, seq_len = argv
    info = build_variant(model_name, strategy, int(layers) or None, folder, int(seq_len))
    print(json.dumps(info))


if __name__ == "__main__":
    child_main(sys.argv[1:])
