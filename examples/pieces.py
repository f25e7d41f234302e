"""The pieces under compresskit.compress, one by one (the README's second example; CI runs it)."""

import tempfile

from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import compresskit
from compresskit.defaults import default_teacher_path

model = AutoModelForSequenceClassification.from_pretrained(default_teacher_path(), num_labels=2)
tokenizer = AutoTokenizer.from_pretrained(default_teacher_path())
plan = compresskit.plan_compression(model, "kroneckerbert21")  # dry run: nothing allocated
report = compresskit.decompose(model, "kroneckerbert21")  # plan -> build -> swap
print(report.format())  # per-module params, FLOPs, error
with tempfile.TemporaryDirectory() as folder:  # keep your own folder instead to share the model
    compresskit.save(model, folder, tokenizer=tokenizer)  # save_pretrained folder + tokenizer + card
    same = AutoModelForSequenceClassification.from_pretrained(folder)  # rebuilt, no decomposition run
    classify = pipeline("text-classification", model=folder)  # any transformers API, once imported
    print(classify("a gorgeous, witty film"))
dense = compresskit.merge(same)  # plain transformers model again
print(f"reloaded: {type(same.bert.encoder.layer[0].output.dense).__name__}")
