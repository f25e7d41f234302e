"""Compress MiniLM-L6 on SST-2 from Python with a composed strategy (the README's example; CI runs it).

Kronecker on the attention projections, low rank on the FFN input, then Hinton KD. The limits keep it
to about a minute on a laptop CPU; remove them (and raise the epochs) for a real run.
"""

import compresskit

strategy = compresskit.Strategy.from_dict(
    {
        "name": "quickstart",
        "task": {"name": "glue", "options": {"task": "sst2"}},
        "finetune": {"max_length": 32, "train_limit": 64},
        "steps": [
            {
                "kind": "decompose",
                "groups": [
                    {
                        "name": "attention",
                        "types": ["Linear"],
                        "names": ["query", "key", "value"],
                        "decomposition": "kronecker",
                        "options": {"b_shape": [2, 2]},
                    },
                    {
                        "name": "ffn_in",
                        "types": ["Linear"],
                        "names": ["intermediate.dense"],
                        "decomposition": "low_rank",
                        "options": {"param_ratio": 0.25},
                    },
                ],
            },
            {"kind": "distill", "distiller": "logits_kd", "data": {"train": {"max_length": 32, "limit": 64}}},
        ],
        "evaluation": {"limit": 128},
        "measure": {"seq_len": 32, "repeats": 3},
        "tracking": {"tracker": "mlflow", "experiment": "quickstart"},
    }
)

result = compresskit.compress("default", strategy, output_dir="runs/quickstart")
print(result.table)
student = compresskit.load(result.model_dir)  # the compressed model, reloaded without re-decomposing
