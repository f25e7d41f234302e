"""Every kind of bad input fails before any work, with one message shape and a documented exit status.

Each case runs the real command line on the tiny teacher and the GLUE samples, checks the exit status,
the message (what, where — config path and file:line, or the file — and how to fix it), that no
traceback is printed, and, for ``run``, that nothing was trained (the run folder has no teacher). The
messages are the catalogue in ``docs/errors.md`` (see ``catalogue.py``).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from catalogue import CASES, HEADER_END, PAGE, Entry, normalise, read_page, record
from tiny_pipeline import make_tiny_teacher, tiny_strategy_dict

from compresskit.cli import main
from compresskit.config import dumps_toml
from compresskit.errors import EXIT_CODES


@dataclass
class World:
    """A tiny teacher, a copy of the GLUE samples and the tiny strategy file, in ``root``."""

    root: Path
    teacher: Path
    data: Path
    config: Path

    @property
    def out(self) -> Path:
        return self.root / "run"

    def run(self, *sets: str, config: Path | None = None) -> list[str]:
        argv = ["run", str(config or self.config), "--output", str(self.out), "--no-progress"]
        for text in sets:
            argv += ["--set", text]
        return argv

    def write_config(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def teacher_copy(self, name: str) -> Path:
        folder = self.root / name
        shutil.copytree(self.teacher, folder)
        return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bad-inputs-base")
    teacher = make_tiny_teacher(root / "teacher", data_dir)
    data = root / "glue"
    shutil.copytree(data_dir / "glue-sample", data)
    return teacher, data


@pytest.fixture
def world(base: tuple[Path, Path], tmp_path: Path) -> World:
    teacher, data = base
    strategy = tiny_strategy_dict(teacher, data.parent)
    strategy["task"]["options"]["data_dir"] = str(data)
    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml(strategy))
    return World(tmp_path, teacher, data, config)


def run_cli(world: World, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    places = [
        (world.root, "<tmp>"),
        (world.data, "<glue>"),
        (world.teacher, "<teacher>"),
        (Path.cwd(), "<cwd>"),
    ]
    return code, normalise(err, *places)


def check(world: World, case: str, title: str, shown: str, code: int, message: str, *, exit_code: int,
          expect: tuple[str, ...]) -> None:  # fmt: skip
    """The shared assertions of every case, then the catalogue entry."""
    assert code == exit_code, message
    assert "Traceback" not in message, message
    assert message.startswith("compresskit: "), message
    for fragment in expect:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    record(Entry(case, title, shown, exit_code, message))


def edit(world: World, old: str, new: str, name: str = "edited.toml") -> Path:
    text = world.config.read_text()
    assert old in text
    return world.write_config(name, text.replace(old, new, 1))


# --------------------------------------------------------------------------- strategy values (exit 3)

PreflightCase = tuple[str, str, str, Callable[[World], list[str]], tuple[str, ...]]

PREFLIGHT: list[PreflightCase] = [
    (
        "no-steps",
        "a strategy with no steps",
        "compresskit run tiny.toml --set 'steps=[]'",
        lambda w: w.run("steps=[]"),
        ("steps: the strategy has no steps", "Add a [[steps]] table"),
    ),
    (
        "empty-losses",
        "a distiller stage with an empty losses table",
        "compresskit run tiny.toml --set 'steps[1].options.losses={}'",
        lambda w: w.run("steps[1].options.losses={}"),
        ("steps[1].options.losses: the table is empty",),
    ),
    (
        "zero-limit",
        "evaluation.limit = 0",
        "compresskit run tiny.toml --set evaluation.limit=0",
        lambda w: w.run("evaluation.limit=0"),
        ("evaluation.limit: expected a positive number", "from --set"),
    ),
    (
        "zero-repeats",
        "measure.repeats = 0 (in the file)",
        "compresskit run tiny.toml  # repeats = 0",
        lambda w: w.run(config=edit(w, "repeats = 2", "repeats = 0")),
        ("measure.repeats: expected a positive number", "edited.toml:"),
    ),
    (
        "negative-train-limit",
        "finetune.train_limit = -5",
        "compresskit run tiny.toml --set finetune.train_limit=-5",
        lambda w: w.run("finetune.train_limit=-5"),
        ("finetune.train_limit: expected a positive number",),
    ),
    (
        "zero-max-length",
        "finetune.max_length = 0 (was silently replaced by the default)",
        "compresskit run tiny.toml --set finetune.max_length=0",
        lambda w: w.run("finetune.max_length=0"),
        ("finetune.max_length: expected a positive number",),
    ),
    (
        "infinite-learning-rate",
        "learning_rate = inf in a training table (in the file)",
        "compresskit run tiny.toml  # [steps.options.training] learning_rate = inf",
        lambda w: w.run(
            config=edit(
                w,
                "learning_rate = 0.001\nlog_every = 1\n\n[evaluation]",
                "learning_rate = inf\nlog_every = 1\n\n[evaluation]",
            )
        ),
        ("steps[1].options.training.learning_rate: expected a finite number, found inf", "edited.toml:"),
    ),
    (
        "seed-out-of-range",
        "seed = -1",
        "compresskit run tiny.toml --set seed=-1",
        lambda w: w.run("seed=-1"),
        ("seed: expected an integer from 0 to 4294967295",),
    ),
    (
        "unknown-key",
        "a misspelt training option (in the file)",
        "compresskit run tiny.toml  # lerning_rate = ...",
        lambda w: w.run(
            config=edit(w, "learning_rate = 0.001\nlog_every", "lerning_rate = 0.001\nlog_every")
        ),
        ("finetune.training.lerning_rate: unknown option. Did you mean 'learning_rate'?", "edited.toml:"),
    ),
    (
        "unknown-option",
        "a misspelt decomposition option (in the file)",
        "compresskit run tiny.toml  # rnak = 4",
        lambda w: w.run(config=edit(w, "rank = 4", "rnak = 4")),
        ("steps[0].groups[0].options.rnak: unknown option. Did you mean 'rank'?", "edited.toml:"),
    ),
    (
        "step-replaces-nothing",
        "a decompose step whose factor shape fits no selected matrix",
        "compresskit run tiny.toml  # kronecker, b_shape = [5, 5] on 37x32 matrices",
        lambda w: w.run(
            config=edit(
                w,
                'decomposition = "low_rank"\n\n[steps.groups.options]\nrank = 4',
                'decomposition = "kronecker"\n\n[steps.groups.options]\nb_shape = [5, 5]',
            )
        ),
        ("steps[0]: this decompose step would replace no module", "Nearest valid b_shapes", "edited.toml:"),
    ),
    (
        "step-grows-model",
        "a ratio that would grow the model",
        "compresskit run tiny.toml --set 'steps[0].groups[0].options={param_ratio=1.5}'",
        lambda w: w.run("steps[0].groups[0].options={param_ratio=1.5}"),
        ("steps[0].groups[0].options: would grow the model",),
    ),
    (
        "head-copy-into-decomposed-module",
        "two_stage_kd copying the teacher's pooler into a decomposed pooler",
        "compresskit run tiny.toml  # decompose pooler.dense, then two_stage_kd",
        lambda w: w.run(config=w.write_config("two-stage.toml", _two_stage(w))),
        ("steps[1].options.copy_from_teacher: stage 2 would fail after stage 1", 'exclude = ["pooler"]'),
    ),
    (
        "unknown-loss",
        "an unknown loss in a distiller stage",
        "compresskit run tiny.toml --set 'steps[1].options.losses={logit_kll=1.0}'",
        lambda w: w.run("steps[1].options.losses={logit_kll=1.0}"),
        ("unknown loss 'logit_kll' (in steps[1].options.losses)", "Did you mean 'logit_kl'"),
    ),
    (
        "unknown-tracker-option",
        "a misspelt tracker option",
        "compresskit run tiny.toml --set tracking.tracker=mlflow --set tracking.options.fail_if_unreachabel=true",
        lambda w: w.run("tracking.tracker='mlflow'", "tracking.options.fail_if_unreachabel=true"),
        ("tracking.options.fail_if_unreachabel: unknown option. Did you mean 'fail_if_unreachable'?",),
    ),
    (
        "teacher-missing",
        "model.teacher that does not exist",
        "compresskit run tiny.toml --set model.teacher=nowhere",
        lambda w: w.run("model.teacher=nowhere"),
        ("model.teacher: 'nowhere' does not exist",),
    ),
]


def _two_stage(world: World) -> str:
    strategy = json.loads(json.dumps(tiny_strategy_dict(world.teacher, world.data.parent)))
    strategy["task"]["options"]["data_dir"] = str(world.data)
    strategy["steps"][0]["groups"][0]["names"] = ["intermediate.dense", "pooler.dense"]
    stage = {"losses": {"hidden_mse": 1.0}, "training": {"batch_size": 16}}
    strategy["steps"][1] = {
        "kind": "distill", "distiller": "two_stage_kd", "options": {"stage1": stage, "stage2": stage},
        "data": {"stage1": {"task": "text", "options": {"block_size": 32, "limit": 8}}},
    }  # fmt: skip
    return dumps_toml(strategy)


@pytest.mark.parametrize("case", PREFLIGHT, ids=[c[0] for c in PREFLIGHT])
def test_bad_strategy_fails_before_any_work(
    case: PreflightCase, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    name, title, shown, argv, expect = case
    code, message = run_cli(world, argv(world), capsys)
    check(world, name, title, shown, code, message, exit_code=3, expect=expect)
    assert not (world.out / "teacher").exists(), "work started before the error"


def test_set_without_value_is_a_usage_error(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, message = run_cli(world, world.run("steps"), capsys)
    check(world, "set-without-value", "--set without =VALUE", "compresskit run tiny.toml --set steps", code,
          message, exit_code=2, expect=("--set 'steps': expected KEY=VALUE",))  # fmt: skip


# --------------------------------------------------------------------------- data and model files (exit 4)


def test_dev_label_outside_the_label_set(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    dev = world.data / "SST-2" / "dev.tsv"
    original = dev.read_text()
    lines = original.splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t7"
    dev.write_text("\n".join(lines) + "\n")
    try:
        code, message = run_cli(world, world.run(), capsys)
    finally:
        dev.write_text(original)
    check(world, "label-outside-label-set", "a dev file with a label outside the label set",
          "compresskit run tiny.toml  # SST-2/dev.tsv line 4 has label 7", code, message, exit_code=4,
          expect=("dev.tsv:4", "label '7' is outside the label set", "read for evaluation.split"))  # fmt: skip
    assert not (world.out / "teacher").exists()


def test_missing_data_file(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    empty = world.root / "empty-glue"
    (empty / "SST-2").mkdir(parents=True)
    shutil.copy(world.data / "SST-2" / "dev.tsv", empty / "SST-2" / "dev.tsv")
    code, message = run_cli(world, world.run(f"task.options.data_dir='{empty}'"), capsys)
    check(world, "missing-data-file", "the train file of the task is missing",
          "compresskit run tiny.toml --set task.options.data_dir=<folder without train.tsv>", code, message,
          exit_code=4, expect=("train.tsv", "read for finetune"))  # fmt: skip
    assert not (world.out / "teacher").exists()


def test_truncated_teacher_weights(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    folder = world.teacher_copy("truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4000])
    code, message = run_cli(world, world.run(f"model.teacher='{folder}'"), capsys)
    check(world, "teacher-truncated-weights", "a truncated model.safetensors in the teacher folder",
          "compresskit run tiny.toml --set model.teacher=<folder with a truncated model.safetensors>", code,
          message, exit_code=4, expect=("model.teacher: the weights in", "truncated, damaged"))  # fmt: skip


def _nan_teacher(world: World) -> Path:
    from safetensors.torch import load_file, save_file

    folder = world.teacher_copy("nan-teacher")
    weights = load_file(str(folder / "model.safetensors"))
    name = next(k for k in weights if k.endswith("layer.1.attention.self.query.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_non_finite_teacher_weights(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _nan_teacher(world)
    code, message = run_cli(world, world.run(f"model.teacher='{folder}'"), capsys)
    check(world, "teacher-non-finite-weights", "a NaN in the teacher's weights",
          "compresskit run tiny.toml --set model.teacher=<folder with a NaN weight>", code, message,
          exit_code=4, expect=("NaN/Inf value(s) in", "layer.1.attention.self.query.weight"))  # fmt: skip
    assert not (world.out / "teacher").exists()


def test_compress_refuses_non_finite_weights_naming_the_module(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _nan_teacher(world)
    out = world.root / "compressed"
    argv = ["compress", "--model", str(folder), "--config", str(_query_step(world)), "--output", str(out)]
    code, message = run_cli(world, argv, capsys)
    check(world, "compress-non-finite-weights", "compressing a model with a NaN weight",
          "compresskit compress --model <folder with a NaN weight> --config query.toml --output out", code,
          message, exit_code=4,
          expect=("encoder.layer.1.attention.self.query.weight holds 1 NaN/Inf value(s)",))  # fmt: skip
    assert not out.exists()


def _query_step(world: World) -> Path:
    return world.write_config(
        "query.toml",
        '[[groups]]\nname = "q"\ntypes = ["Linear"]\nnames = ["query"]\ndecomposition = "low_rank"\n'
        "options = { rank = 4 }\n",
    )


def test_truncated_compressed_folder(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    out = world.root / "compressed"
    argv = [
        "compress",
        "--model",
        str(world.teacher),
        "--config",
        str(_query_step(world)),
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    capsys.readouterr()
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    glue = ["--task-option", "task=sst2", "--task-option", f"data_dir='{world.data}'"]
    code, message = run_cli(world, ["evaluate", "--model", str(out), *glue], capsys)
    check(world, "compressed-folder-truncated", "a truncated model.safetensors in a compressed folder",
          "compresskit evaluate --model <compressed folder, weights truncated> --task-option task=sst2", code,
          message, exit_code=4, expect=("model.safetensors cannot be read", "truncated or damaged"))  # fmt: skip


def test_teacher_with_remote_code_is_refused(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    from test_untrusted_files import plant_remote_code

    folder, marker = plant_remote_code(world.teacher_copy("remote-code"))
    code, message = run_cli(world, world.run(f"model.teacher='{folder}'"), capsys)
    check(world, "teacher-remote-code", "a teacher folder whose config.json asks to run its own Python code",
          "compresskit run tiny.toml --set model.teacher=<folder with auto_map and evil.py>", code, message,
          exit_code=3, expect=("never runs code from model files",))  # fmt: skip
    assert not marker.exists()


def test_teacher_pickle_is_refused(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    from test_untrusted_files import plant_malicious_pickle

    folder, marker = plant_malicious_pickle(world.teacher_copy("pickle"))
    code, message = run_cli(world, world.run(f"model.teacher='{folder}'"), capsys)
    check(world, "teacher-pickle-refused", "a teacher whose pytorch_model.bin pickle holds more than tensors",
          "compresskit run tiny.toml --set model.teacher=<folder with a malicious pytorch_model.bin>", code,
          message, exit_code=4, expect=("pickle weights in", "were refused", "weights_only=True"))  # fmt: skip
    assert not marker.exists()


# --------------------------------------------------------------------------- environment (exit 6) and plugins


def test_run_folder_in_use(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from compresskit.run_lock import RunLock

    monkeypatch.setattr(sys, "argv", ["compresskit", "run", "first.toml"])  # what the holder runs
    with RunLock(world.out):
        code, message = run_cli(world, world.run(), capsys)
    check(world, "run-folder-in-use", "a second run in a run folder another process is using",
          "compresskit run tiny.toml --output run  # while another run works in run/", code, message,
          exit_code=6, expect=("<tmp>/run is in use by process <pid> (<who>): compresskit run first.toml", "another --output"))  # fmt: skip
    assert not (world.out / "teacher").exists()


@pytest.mark.parametrize("command", ["finetune", "distill"])
def test_finetune_and_distill_output_folders_are_locked_too(
    world: World, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    from compresskit.run_lock import RunLock

    task = ["--task", "glue", "--task-option", "task=sst2", "--task-option", f'data_dir="{world.data}"']
    models = {"finetune": ["--model"], "distill": ["--student", str(world.teacher), "--teacher"]}[command]
    argv = [command, *models, str(world.teacher), *task, "--output", str(world.out)]
    with RunLock(world.out):
        code, message = run_cli(world, argv, capsys)
    assert code == 6, message
    assert "<tmp>/run is in use by process" in message and "Traceback" not in message
    assert not (world.out / "model").exists()


def test_blocked_component_says_it_is_blocked(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPRESSKIT_DISABLE_PLUGINS", "low_rank")
    code, message = run_cli(world, world.run(), capsys)
    check(world, "blocked-component", "a component whose plugin COMPRESSKIT_DISABLE_PLUGINS blocks",
          "COMPRESSKIT_DISABLE_PLUGINS=low_rank compresskit run tiny.toml", code, message, exit_code=3,
          expect=("unknown decomposition 'low_rank'", "but COMPRESSKIT_DISABLE_PLUGINS blocks that plugin"))  # fmt: skip


def test_misspelt_plugin_in_block_list_warns(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPRESSKIT_DISABLE_PLUGINS", "kroneker")
    code, message = run_cli(world, ["plugins", "--kind", "preset"], capsys)
    check(world, "disable-plugins-typo", "a name in COMPRESSKIT_DISABLE_PLUGINS that no plugin has (a warning)",
          "COMPRESSKIT_DISABLE_PLUGINS=kroneker compresskit plugins --kind preset", code, message,
          exit_code=0, expect=("compresskit: warning:", "Did you mean 'kronecker'?", "Installed plugins:"))  # fmt: skip


def test_plugin_exiting_on_import_is_a_plugin_error(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata as metadata

    import compresskit.plugins as plugins

    (world.root / "exiting_plugin.py").write_text("import sys\nsys.exit('no GPU found, bye')\n")
    monkeypatch.syspath_prepend(str(world.root))
    entry = metadata.EntryPoint("exiting", "exiting_plugin", "compresskit")
    monkeypatch.setattr(plugins, "_entry_points", lambda: [entry])
    code, message = run_cli(world, ["plugins"], capsys)
    sys.modules.pop("exiting_plugin", None)
    check(world, "plugin-exits-on-import", "an installed plugin that calls sys.exit() when imported",
          "compresskit plugins  # with a plugin 'exiting' whose module calls sys.exit()", code, message,
          exit_code=6, expect=("plugin 'exiting'", "SystemExit", "COMPRESSKIT_DISABLE_PLUGINS=exiting"))  # fmt: skip


# --------------------------------------------------------------------------- training (exit 5)


def test_non_finite_loss_gives_a_way_out_the_next_command_accepts(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    import shlex

    sets = ["steps[1].options.training.learning_rate=1e30", "steps[1].options.training.checkpoint_every=1"]
    code, message = run_cli(world, world.run(*sets), capsys)
    check(world, "non-finite-loss", "a learning rate so high that the distillation loss turns NaN",
          "compresskit run tiny.toml --set steps[1].options.training.learning_rate=1e30", code, message,
          exit_code=5, expect=("non-finite", "To go on with half the learning rate, run",
                               "steps[1].options.training.learning_rate=5e+29"))  # fmt: skip
    command = next(
        line.strip() for line in message.splitlines() if line.strip().startswith("compresskit run")
    )
    argv = shlex.split(command.replace("<tmp>", str(world.root)))[1:]
    assert argv[argv.index("--output") + 1] == str(world.out)
    assert (world.out / "steps" / "01-distill" / "work").exists()  # the failed stage had checkpoints
    sane = [a.replace("=5e+29", "=0.001") for a in argv]  # the same command, with a rate that trains
    assert main(sane) == 0, capsys.readouterr().err
    assert (world.out / "steps" / "01-distill.old-1" / "work").exists()  # partial work kept aside
    assert json.loads((world.out / "summary.json").read_text())["student"]["metrics"]


# --------------------------------------------------------------------------- the page


def test_catalogue_page_lists_exactly_the_cases_and_the_exit_codes() -> None:
    blocks = read_page()
    assert list(blocks) == [c for c in CASES if c in blocks]
    assert set(blocks) == set(CASES), (
        f"missing: {set(CASES) - set(blocks)}, stale: {set(blocks) - set(CASES)}"
    )
    header = PAGE.read_text(encoding="utf-8").partition(HEADER_END)[0]
    for code, meaning in EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in header


# --------------------------------------------------------------------------- inputs found by trying the CLI


def test_config_that_is_not_utf8_or_a_folder(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    binary = world.write_config("binary.toml", "")
    binary.write_bytes(b"\xff\xfe name = 1")
    code, message = run_cli(world, ["run", str(binary)], capsys)
    assert code == 3 and "not UTF-8 text" in message and "Traceback" not in message, message
    code, message = run_cli(world, ["run", str(world.root)], capsys)
    assert code == 3 and "is a folder; give the strategy's .toml file" in message, message


def test_output_that_is_a_file_is_refused_before_any_work(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = world.run()
    argv[argv.index("--output") + 1] = str(world.config)  # an existing file
    code, message = run_cli(world, argv, capsys)
    assert code == 2 and "it is a file; give a folder" in message, message
    assert not (world.root / "run").exists()


def test_save_into_a_file_and_load_with_a_bad_dtype_are_clear_errors(world: World) -> None:
    from transformers import BertModel

    import compresskit

    model = BertModel.from_pretrained(world.teacher)
    with pytest.raises(compresskit.CheckpointError, match="it is a file, not a folder"):
        compresskit.save(model, world.config)
    folder = compresskit.save(model, world.root / "saved")
    with pytest.raises(compresskit.ConfigError, match=r"load\(dtype='float17'\): not a torch dtype"):
        compresskit.load(folder, dtype="float17")


def test_evaluate_refuses_a_head_that_does_not_fit_the_task(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = world.root / "sst2-head"
    BertForSequenceClassification.from_pretrained(world.teacher, num_labels=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(world.teacher).save_pretrained(folder)
    task = ["--task", "glue", "--task-option", "task=stsb", "--task-option", f'data_dir="{world.data}"']
    code, message = run_cli(world, ["evaluate", "--model", str(folder), *task], capsys)
    assert code == 3 and "the model's head has 2 output(s) but the task needs 1 (regression)" in message, (
        message
    )


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("steps[1].options.losses={logit_kl=-1.0}", "a loss weight must be a finite number ≥ 0"),
        ("steps[1].data.trian={limit=4}", "has no stage that reads data 'trian'. Did you mean 'train'?"),
        ("evaluation.max_length=100", "evaluation.max_length is 100 but the teacher takes at most 64 tokens"),
        ('steps[1].distiller="logit_kd"', "unknown distiller 'logit_kd' (in steps[1].distiller)"),
        ('task.name="gleu"', "unknown task 'gleu' (in task.name)"),
    ],
    ids=[
        "negative-loss-weight",
        "misspelt-data-name",
        "longer-than-positions",
        "distiller-name",
        "task-name",
    ],
)
def test_inputs_that_used_to_run_or_fail_late_stop_first(
    world: World, capsys: pytest.CaptureFixture[str], override: str, expect: str
) -> None:
    code, message = run_cli(world, world.run(override), capsys)
    assert code == 3 and expect in message and "Traceback" not in message, message
    assert not (world.out / "teacher").exists()  # stopped before fine-tuning the teacher
