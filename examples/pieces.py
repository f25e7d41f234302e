"""The pieces under compresskit.compress, one by one (the README's second example; CI runs it)."""

from transformers import AutoModelForSequenceClassification

import compresskit
from compresskit.defaults import default_teacher_path

model = AutoModelForSequenceClassification.from_pretrained(default_teacher_path(), num_labels=2)
plan = compresskit.plan_compression(model, "kroneckerbert21")  # dry run: nothing allocated
report = compresskit.decompose(model, "kroneckerbert21")  # plan -> build -> swap
print(report.format())  # per-module params, FLOPs, error
compresskit.save(model, "kb21")  # safetensors + config + plan
same = compresskit.load("kb21")  # no decomposition re-run
dense = compresskit.merge(same)  # plain transformers model again
