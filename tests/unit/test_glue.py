"""The ``glue`` task: every task on disk, the GLUE layouts of the missing ones, bad input, loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from compresskit_plugins.glue import GLUE_TASKS, GlueTask
from sklearn import metrics as sk

from compresskit import ConfigError, DataError, Registry

ON_DISK = {"cola": 1043, "sst2": 872, "mrpc": 408, "stsb": 1500, "qnli": 5463, "rte": 277, "wnli": 71}


class CharTokenizer:
    """A tiny stand-in for a fast tokenizer: one id per character, pairs joined by [SEP]."""

    pad_token_id = 0
    padding_side = "right"
    is_fast = True

    def __call__(self, first: list[str], second: list[str] | None = None, *, truncation: bool = True,
                 max_length: int = 512) -> dict[str, list[list[int]]]:  # fmt: skip
        rows = []
        for i, text in enumerate(first):
            ids = [101, *(ord(c) % 90 + 5 for c in text), 102]
            if second is not None:
                ids += [*(ord(c) % 90 + 5 for c in second[i]), 102]
            rows.append(ids[:max_length])
        return {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}


def test_glue_is_registered() -> None:
    task = Registry.from_plugins().create("task", "glue", {"task": "cola"})
    assert isinstance(task, GlueTask)
    assert task.primary_metric == "matthews_correlation"


@pytest.mark.parametrize(("task", "rows"), sorted(ON_DISK.items()))
def test_every_dev_set_on_disk_loads_with_official_size(task: str, rows: int, data_dir: Path) -> None:
    glue = GlueTask({"task": task, "data_dir": str(data_dir / "glue")})
    data = glue.load_split("dev")
    assert len(data) == rows
    spec = GLUE_TASKS[task]
    assert data.column_names == [*spec.text_columns, "label", "idx"]
    labels = np.asarray(data["label"])
    if spec.is_regression:
        assert labels.min() >= 0 and labels.max() <= 5 and labels.dtype == np.float64
    else:
        assert set(labels.tolist()) == set(range(spec.num_labels))


def test_qnli_rows_starting_with_a_quote_are_not_merged(data_dir: Path) -> None:
    data = GlueTask({"task": "qnli", "data_dir": str(data_dir / "glue")}).load_split("dev")
    assert any(s.startswith('"') for s in data["sentence"])
    assert len(data) == 5463


def test_mrpc_bom_and_cola_without_header(data_dir: Path) -> None:
    mrpc = GlueTask({"task": "mrpc", "data_dir": str(data_dir / "glue-sample")}).load_split("train")
    assert len(mrpc) == 64 and mrpc[0]["sentence1"].startswith("Amrozi")
    cola = GlueTask({"task": "cola", "data_dir": str(data_dir / "glue-sample")}).load_split("dev")
    assert len(cola) == 32  # the first line is an example, not a header
    assert cola[0]["sentence"] == "The sailors rode the breeze clear of the rocks."


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


MNLI_TRAIN_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER.replace("label1\t", "label1\tlabel2\tlabel3\tlabel4\tlabel5\t")


def _mnli_row(i: int, label: str, dev: bool) -> str:
    labels = [label] * (5 if dev else 1)
    return "\t".join([str(i), "1", f"{i}e", "fiction", "(x)", "(y)", "(X)", "(Y)", f"premise {i}",
                      f"hypothesis {i}", *labels, label])  # fmt: skip


def test_mnli_matched_and_mismatched_layout(tmp_path: Path) -> None:
    labels = ["entailment", "neutral", "contradiction"]
    _write(
        tmp_path / "MNLI/train.tsv",
        [MNLI_TRAIN_HEADER, *(_mnli_row(i, labels[i % 3], False) for i in range(6))],
    )
    _write(
        tmp_path / "MNLI/dev_matched.tsv",
        [MNLI_DEV_HEADER, *(_mnli_row(i, labels[i % 3], True) for i in range(3))],
    )
    _write(tmp_path / "MNLI/dev_mismatched.tsv", [MNLI_DEV_HEADER, _mnli_row(9, "neutral", True)])
    matched = GlueTask({"task": "mnli", "data_dir": str(tmp_path)})
    assert matched.num_labels == 3
    assert matched.load_split("train")["label"] == [0, 1, 2, 0, 1, 2]
    assert matched.load_split("dev")["premise"] == ["premise 0", "premise 1", "premise 2"]
    mismatched = GlueTask({"task": "mnli_mismatched", "data_dir": str(tmp_path)})
    assert mismatched.load_split("dev")["hypothesis"] == ["hypothesis 9"]
    assert mismatched.load_split("dev")["label"] == [1]


def test_qqp_and_qnli_train_layout(tmp_path: Path) -> None:
    _write(tmp_path / "QQP/train.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                                        "0\t1\t2\tHow?\tWhy?\t0", "1\t3\t4\tWho?\tWho is?\t1"])  # fmt: skip
    qqp = GlueTask({"task": "qqp", "data_dir": str(tmp_path)}).load_split("train")
    assert qqp["question2"] == ["Why?", "Who is?"] and qqp["label"] == [0, 1]
    _write(tmp_path / "QNLI/train.tsv", ["index\tquestion\tsentence\tlabel",
                                         '0\tWhat?\t"Quoted start.\tnot_entailment', "1\tQ\tS\tentailment"])  # fmt: skip
    qnli = GlueTask({"task": "qnli", "data_dir": str(tmp_path)}).load_split("train")
    assert qnli["sentence"] == ['"Quoted start.', "S"] and qnli["label"] == [1, 0]


def test_missing_file_names_the_expected_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing file .*SST-2/dev\.tsv"):
        GlueTask({"task": "sst2", "data_dir": str(tmp_path)}).load_split("dev")


def test_malformed_row_reports_file_and_line(tmp_path: Path) -> None:
    _write(
        tmp_path / "RTE/dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\tonly two"]
    )
    with pytest.raises(DataError, match=r"RTE/dev\.tsv:3: malformed row: expected 4"):
        GlueTask({"task": "rte", "data_dir": str(tmp_path)}).load_split("dev")
    skipped = GlueTask({"task": "rte", "data_dir": str(tmp_path), "skip_malformed": True}).load_split("dev")
    assert len(skipped) == 1


def test_label_outside_label_set(tmp_path: Path) -> None:
    _write(tmp_path / "SST-2/train.tsv", ["sentence\tlabel", "good\t1", "bad\t2"])
    with pytest.raises(DataError, match=r"train\.tsv:3: GLUE sst2 label '2' is outside the label set"):
        GlueTask({"task": "sst2", "data_dir": str(tmp_path)}).load_split("train")
    _write(tmp_path / "STS-B/dev.tsv", ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                                        "0\tg\tf\t2012\t1\ts\ts\ta\tb\tfive"])  # fmt: skip
    with pytest.raises(DataError, match="score 'five' is not a number"):
        GlueTask({"task": "stsb", "data_dir": str(tmp_path)}).load_split("dev")


def test_wrong_header_is_reported(tmp_path: Path) -> None:
    _write(tmp_path / "WNLI/dev.tsv", ["index\ttext_a\ttext_b\tlabel", "0\ta\tb\t1"])
    with pytest.raises(DataError, match=r"header lacks column\(s\) \['sentence1', 'sentence2'\]"):
        GlueTask({"task": "wnli", "data_dir": str(tmp_path)}).load_split("dev")


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'sst2'"):
        GlueTask({"task": "sst-2"})
    with pytest.raises(ConfigError, match="source"):
        GlueTask({"source": "web"})
    with pytest.raises(ConfigError, match="no split 'test'"):
        GlueTask({"task": "rte"}).load_split("test")


def test_hub_source_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="could not load nyu-mll/glue"):
        GlueTask({"task": "rte", "source": "hub"}).load_split("dev")


def test_dataloader_pads_dynamically_and_limits(data_dir: Path) -> None:
    task = GlueTask({"task": "rte", "data_dir": str(data_dir / "glue-sample"), "max_length": 40})
    batches = list(task.dataloader("train", CharTokenizer(), batch_size=16, limit=20))
    assert [len(b["labels"]) for b in batches] == [16, 4]
    for batch in batches:
        assert batch["input_ids"].shape[1] <= 40
        lengths = batch["attention_mask"].sum(dim=1)
        assert lengths.max() == batch["input_ids"].shape[1]  # padded to the longest in the batch only
        assert torch.all(batch["input_ids"][batch["attention_mask"] == 0] == 0)
    assert batches[0]["labels"].dtype == torch.long


def test_shuffle_is_seeded(data_dir: Path) -> None:
    task = GlueTask({"task": "sst2", "data_dir": str(data_dir / "glue-sample")})

    def first_labels(seed: int) -> list[int]:
        loader = task.dataloader("train", CharTokenizer(), batch_size=64, shuffle=True, seed=seed)
        return next(iter(loader))["input_ids"][:, 1].tolist()

    assert first_labels(3) == first_labels(3)
    assert first_labels(3) != first_labels(4)


def test_stsb_labels_are_float_and_model_kwargs_say_regression(data_dir: Path) -> None:
    task = GlueTask({"task": "stsb", "data_dir": str(data_dir / "glue-sample")})
    batch = next(iter(task.dataloader("dev", CharTokenizer(), batch_size=8)))
    assert batch["labels"].dtype == torch.float32
    assert task.model_kwargs() == {"num_labels": 1, "problem_type": "regression"}


def test_compute_metrics_from_logits() -> None:
    task = GlueTask({"task": "mrpc"})
    logits = np.array([[2.0, -1.0], [0.0, 3.0], [1.0, 0.5], [-1.0, 0.0]])
    refs = np.array([0, 1, 1, 1])
    pred = logits.argmax(axis=1)
    got = task.compute_metrics(logits, refs)
    assert got == pytest.approx({"f1": sk.f1_score(refs, pred), "accuracy": sk.accuracy_score(refs, pred)})
    with pytest.raises(ConfigError, match="3 columns"):
        task.compute_metrics(np.zeros((4, 3)), refs)


class MeanLogitModel(torch.nn.Module):
    """Predicts class 1 when the mean token id is large: just enough to exercise evaluate()."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        mean = (input_ids * attention_mask).sum(1) / attention_mask.sum(1)
        logits = torch.stack([torch.full_like(mean, 50.0), mean * self.scale], dim=1)
        return type("Out", (), {"logits": logits})()


def test_evaluate_matches_metrics_on_manual_predictions(data_dir: Path) -> None:
    task = GlueTask({"task": "cola", "data_dir": str(data_dir / "glue-sample")})
    model = MeanLogitModel()
    got = task.evaluate(model, CharTokenizer(), "dev", batch_size=5)
    loader = task.dataloader("dev", CharTokenizer(), batch_size=32)
    batch = next(iter(loader))
    with torch.no_grad():
        pred = model(batch["input_ids"], batch["attention_mask"]).logits.argmax(1).numpy()
    refs = batch["labels"].numpy()
    assert got["matthews_correlation"] == pytest.approx(sk.matthews_corrcoef(refs, pred))
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(refs, pred))
    assert model.training  # mode restored


def test_real_tokenizer_pairs_and_sst2_dev(data_dir: Path, minilm_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    sst2 = GlueTask({"task": "sst2", "data_dir": str(data_dir / "glue")})
    batches = list(sst2.dataloader("dev", tokenizer, batch_size=128))
    assert sum(len(b["labels"]) for b in batches) == 872
    rte = GlueTask({"task": "rte", "data_dir": str(data_dir / "glue-sample"), "max_length": 32})
    batch = next(iter(rte.dataloader("dev", tokenizer, batch_size=4)))
    assert batch["input_ids"].shape[1] == 32  # RTE pairs are long: truncated to max_length
    assert set(batch["token_type_ids"][0].tolist()) == {0, 1}  # a sentence pair


def test_regression_metrics_refuse_classification_logits() -> None:
    import numpy as np

    from compresskit.errors import ConfigError

    stsb = GlueTask({"task": "stsb"})
    scores = np.array([0.5, 3.0, 4.5])
    assert stsb.compute_metrics(scores.reshape(-1, 1), scores)["pearson"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="gives 2 outputs per example but this is a regression task"):
        stsb.compute_metrics(np.stack([scores, -scores], axis=1), scores)
