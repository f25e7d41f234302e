"""The training loop: optimisation, accumulation, clipping, schedule, evaluation, errors, precision."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import DataLoader, TensorDataset

from compresskit import (
    CheckpointError,
    ConfigError,
    Tracker,
    Trainer,
    TrainingConfig,
    TrainingError,
    TrainResult,
)
from compresskit import checkpoint as ckpt
from compresskit.training import linear_warmup_decay, parameter_groups


def _data(n: int = 32) -> TensorDataset:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(n, 6, generator=generator)
    y = (x[:, 0] - x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))


def _ce(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    logits = model(batch[0])
    loss = torch.nn.functional.cross_entropy(logits, batch[1])
    return {"loss": loss, "ce": loss.detach()}


def _config(**overrides: Any) -> TrainingConfig:
    base: dict[str, Any] = {"learning_rate": 1e-2, "progress": False, "log_every": 1, "warmup_ratio": 0.0}
    return TrainingConfig(**(base | overrides))


def _trainer(tmp_path: Path, model: torch.nn.Module | None = None, batch_size: int = 4, **kw: Any) -> Trainer:
    config = kw.pop("config", _config())
    loader = DataLoader(_data(), batch_size=batch_size, shuffle=kw.pop("shuffle", True))
    return Trainer(model or _model(), config, loader, kw.pop("compute_loss", _ce), output_dir=tmp_path, **kw)


@pytest.fixture
def optimizer_steps() -> Iterator[list[float]]:
    """Global-norm of the gradients each optimizer step saw (after clipping)."""
    norms: list[float] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    handle = register_optimizer_step_pre_hook(hook)
    yield norms
    handle.remove()


def test_loss_decreases_and_result_is_complete(tmp_path: Path) -> None:
    result = _trainer(tmp_path, config=_config(num_epochs=6, log_every=8)).train()
    assert isinstance(result, TrainResult)
    assert result.steps == 48 and result.epochs_completed == 6.0
    assert result.losses["ce"][-1] < 0.6 * result.losses["ce"][0]
    assert result.resumed_from_step is None
    assert result.final_checkpoint is not None and ckpt.is_complete(result.final_checkpoint)


def test_gradient_accumulation_matches_a_larger_batch(tmp_path: Path) -> None:
    small = _model()
    _trainer(
        tmp_path / "accum",
        small,
        batch_size=4,
        shuffle=False,
        config=_config(max_steps=4, gradient_accumulation_steps=2, max_grad_norm=None),
    ).train()
    large = _model()
    _trainer(tmp_path / "large", large, batch_size=8, shuffle=False, config=_config(max_steps=4)).train()
    untrained = _model()
    for (name, a), b, c in zip(
        small.state_dict().items(), large.state_dict().values(), untrained.state_dict().values(), strict=True
    ):
        assert not torch.equal(a, c), f"{name} did not train"
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} differs")


def test_gradients_are_clipped_to_max_grad_norm(tmp_path: Path, optimizer_steps: list[float]) -> None:
    loud = lambda model, batch: {"loss": 100.0 * _ce(model, batch)["loss"]}  # noqa: E731
    _trainer(tmp_path / "free", compute_loss=loud, config=_config(max_steps=3, max_grad_norm=None)).train()
    unclipped = list(optimizer_steps)
    optimizer_steps.clear()
    _trainer(tmp_path / "clip", compute_loss=loud, config=_config(max_steps=3, max_grad_norm=0.25)).train()
    assert min(unclipped) > 1.0
    assert len(optimizer_steps) == 3 and max(optimizer_steps) == pytest.approx(0.25, rel=1e-4)


def test_warmup_then_linear_decay() -> None:
    factors = [linear_warmup_decay(s, warmup_steps=2, total_steps=8) for s in range(9)]
    assert factors == pytest.approx([0, 0.5, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0])


def test_learning_rate_history_follows_the_schedule(tmp_path: Path) -> None:
    # 8 optimizer steps, warmup_ratio 0.25 → 2 warmup steps; lr logged after each step
    config = _config(max_steps=8, warmup_ratio=0.25, learning_rate=0.1)
    result = _trainer(tmp_path, config=config).train()
    assert result.losses["lr"] == pytest.approx(
        [0.05, 0.1, 0.1 * 5 / 6, 0.1 * 4 / 6, 0.05, 0.1 / 3, 0.1 / 6, 0.0]
    )


def test_weight_decay_skips_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decayed, plain = parameter_groups(model, 0.1)
    assert decayed["weight_decay"] == 0.1 and [p.shape for p in decayed["params"]] == [(4, 4)]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3


def _scripted(values: list[float], seen: list[dict[str, torch.Tensor]]) -> Any:
    it = iter(values)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        assert not model.training
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"score": next(it), "other": 1.0}

    return evaluate


@pytest.mark.parametrize(("greater", "best_eval"), [(True, 1), (False, 0)])
def test_evaluates_every_n_steps_and_keeps_the_best(tmp_path: Path, greater: bool, best_eval: int) -> None:
    seen: list[dict[str, torch.Tensor]] = []
    trainer = _trainer(
        tmp_path,
        config=_config(max_steps=8, eval_every=2, checkpoint_every=1, keep_checkpoints=1),
        evaluate=_scripted([0.1, 0.9, 0.3, 0.4], seen),
        primary_metric="score",
        greater_is_better=greater,
    )
    result = trainer.train()
    best_step = 2 * (best_eval + 1)
    assert len(seen) == 4
    assert result.best_metric == [0.1, 0.9, 0.3, 0.4][best_eval]
    assert result.best_checkpoint == tmp_path / "checkpoints" / ckpt.checkpoint_name(best_step)
    assert ckpt.read_pointer(tmp_path / "checkpoints", ckpt.BEST_POINTER) == result.best_checkpoint
    assert result.final_metrics == {"score": 0.4, "other": 1.0}
    # pruned to the last checkpoint plus the best one
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path / "checkpoints")] == [
        ckpt.checkpoint_name(best_step),
        ckpt.checkpoint_name(8),
    ]
    restored = _model()
    ckpt.load_model(restored, result.best_checkpoint)
    for name, tensor in restored.state_dict().items():
        assert torch.equal(tensor, seen[best_eval][name])


def test_missing_primary_metric_is_a_clear_error(tmp_path: Path) -> None:
    trainer = _trainer(
        tmp_path,
        config=_config(max_steps=2, eval_every=1),
        evaluate=lambda m: {"acc": 1.0},
        primary_metric="f1",
    )
    with pytest.raises(TrainingError, match=r"'f1'.*\['acc'\]"):
        trainer.train()


class _Recorder(Tracker):
    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))


def test_tracker_gets_loss_terms_lr_and_eval_metrics(tmp_path: Path) -> None:
    tracker = _Recorder()
    config = _config(max_steps=4, log_every=2, eval_every=4)
    _trainer(tmp_path, config=config, tracker=tracker, stage="kd", evaluate=lambda m: {"acc": 0.5}).train()
    steps = [(step, sorted(metrics)) for step, metrics in tracker.calls]
    assert steps == [
        (2, ["kd/ce", "kd/loss", "kd/lr"]),
        (4, ["kd/ce", "kd/loss", "kd/lr"]),
        (4, ["kd/eval/acc"]),
    ]


def _poisoned(at_call: int) -> Any:
    calls = 0

    def compute(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        terms = _ce(model, batch)
        if calls >= at_call:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    return compute


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    model = _model()
    snapshots: list[dict[str, torch.Tensor]] = []
    trainer = _trainer(
        tmp_path,
        model,
        config=_config(max_steps=10, checkpoint_every=2, eval_every=2),
        compute_loss=_poisoned(6),
        evaluate=lambda m: snapshots.append({k: v.clone() for k, v in m.state_dict().items()}) or {},
    )
    with pytest.raises(TrainingError) as info:
        trainer.train()
    message = str(info.value)
    good = tmp_path / "checkpoints" / ckpt.checkpoint_name(4)
    assert "non-finite loss" in message and "optimizer step 6" in message and str(good) in message
    assert ckpt.find_latest(tmp_path / "checkpoints") == good
    restored = _model()
    ckpt.load_model(restored, good)
    assert all(torch.equal(v, snapshots[1][k]) for k, v in restored.state_dict().items())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_with_another_fingerprint_is_refused(tmp_path: Path) -> None:
    _trainer(tmp_path, config=_config(max_steps=2), fingerprint={"strategy": "kb8"}).train()
    with pytest.raises(CheckpointError, match=r"user\.strategy.*kb8.*kb21(.|\n)*--restart"):
        _trainer(tmp_path, config=_config(max_steps=2), fingerprint={"strategy": "kb21"}).train()
    other_model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    with pytest.raises(CheckpointError, match=r"model\.structure"):
        _trainer(tmp_path, other_model, config=_config(max_steps=2), fingerprint={"strategy": "kb8"}).train()
    with pytest.raises(CheckpointError, match=r"training\.learning_rate"):
        _trainer(
            tmp_path, config=_config(max_steps=2, learning_rate=0.5), fingerprint={"strategy": "kb8"}
        ).train()


def test_completed_run_resumes_without_training_again(tmp_path: Path) -> None:
    first = _trainer(tmp_path, config=_config(max_steps=3)).train()
    calls: list[int] = []
    again = _trainer(
        tmp_path, config=_config(max_steps=3), compute_loss=lambda m, b: calls.append(1) or _ce(m, b)
    )
    result = again.train()
    assert calls == [] and result.resumed_from_step == 3 and result.losses == first.losses


def test_restart_moves_old_checkpoints_aside(tmp_path: Path) -> None:
    _trainer(tmp_path, config=_config(max_steps=2)).train()
    result = _trainer(tmp_path, config=_config(max_steps=2, learning_rate=0.5), resume=False).train()
    assert result.resumed_from_step is None
    assert ckpt.is_complete(tmp_path / "checkpoints.old-1" / ckpt.checkpoint_name(2))


def test_out_of_memory_becomes_a_training_error(tmp_path: Path) -> None:
    def exhausted(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(TrainingError, match=r"out of memory(.|\n)*batch_size \(now 32\)"):
        _trainer(tmp_path, compute_loss=exhausted, config=_config(max_steps=2)).train()


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        (lambda loss: loss, "mapping with the key 'loss'"),
        (lambda loss: {"total": loss}, "mapping with the key 'loss'"),
        (lambda loss: {"loss": loss, "vec": torch.ones(3)}, "'vec' with shape"),
        (lambda loss: {"loss": loss.item()}, "not a tensor with a gradient"),
    ],
)
def test_bad_compute_loss_output_is_explained(tmp_path: Path, returned: Any, match: str) -> None:
    compute = lambda model, batch: returned(_ce(model, batch)["loss"])  # noqa: E731
    with pytest.raises(TrainingError, match=match):
        _trainer(tmp_path, compute_loss=compute, config=_config(max_steps=1)).train()


def test_frozen_teacher_is_in_eval_mode_without_gradients_and_not_checkpointed(tmp_path: Path) -> None:
    teacher = torch.nn.Sequential(torch.nn.Linear(6, 2), torch.nn.Dropout(0.5))
    teacher.train()

    def distill(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        assert not teacher.training
        target = teacher(batch[0])
        assert not target.requires_grad
        return {"loss": (model(batch[0]) - target).pow(2).mean()}

    before = teacher[0].weight.clone()
    result = _trainer(
        tmp_path, config=_config(max_steps=2), compute_loss=distill, frozen_modules=[teacher]
    ).train()
    assert torch.equal(before, teacher[0].weight)
    from safetensors.torch import load_file

    saved = load_file(str(result.final_checkpoint / ckpt.MODEL_FILE))
    assert sorted(saved) == sorted(_model().state_dict())


def test_bf16_mixed_precision_runs_under_autocast_on_cpu(tmp_path: Path) -> None:
    dtypes: list[torch.dtype] = []

    def compute(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        hidden = model[0](batch[0])
        dtypes.append(hidden.dtype)
        return _ce(model, batch)

    model = _model()
    result = _trainer(
        tmp_path, model, config=_config(max_steps=4, mixed_precision="bf16", cpu=True), compute_loss=compute
    ).train()
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert result.steps == 4
    # the autocast wrapper is removed from the caller's model afterwards
    assert model(torch.randn(2, 6)).dtype == torch.float32


def test_fp16_without_cuda_is_refused_with_advice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU.*bf16"):
        _trainer(tmp_path, config=_config(max_steps=1, mixed_precision="fp16", cpu=True)).train()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 mixed precision needs a CUDA GPU")
def test_fp16_mixed_precision_on_cuda(tmp_path: Path) -> None:  # pragma: no cover - needs a GPU
    model = _model()
    result = _trainer(tmp_path, model, config=_config(max_steps=4, mixed_precision="fp16")).train()
    assert result.steps == 4 and all(torch.isfinite(p).all() for p in model.parameters())
    assert (result.final_checkpoint / "scaler.pt").is_file()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", 0),
        ("batch_size", 0),
        ("gradient_accumulation_steps", 1.5),
        ("warmup_ratio", 1.0),
        ("mixed_precision", "fp8"),
        ("eval_every", -1),
        ("max_grad_norm", 0.0),
    ],
)
def test_invalid_config_values_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"training\.{field}"):
        TrainingConfig(**{field: value})


def test_trainer_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs an evaluate function"):
        _trainer(tmp_path, primary_metric="acc")
    with pytest.raises(ConfigError, match="eval_every"):
        _trainer(tmp_path, config=_config(eval_every=2))
    frozen = _model().requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameter"):
        _trainer(tmp_path, frozen).train()


def test_epochs_may_be_fractional(tmp_path: Path) -> None:
    # 8 batches per epoch; 1.5 epochs = 12 steps, ending in the middle of epoch 1
    result = _trainer(tmp_path, config=_config(num_epochs=1.5, log_every=100)).train()
    assert result.steps == 12 and math.isclose(result.epochs_completed, 1.5)


def test_progress_bar_shows_the_running_loss_terms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _trainer(tmp_path / "on", config=_config(max_steps=3, progress=True), stage="kd").train()
    shown = capsys.readouterr().err
    assert "kd" in shown and "3/3" in shown and "loss=" in shown and "ce=" in shown
    _trainer(tmp_path / "off", config=_config(max_steps=3, progress=False), stage="kd").train()
    assert "3/3" not in capsys.readouterr().err


def test_load_best_at_end_puts_the_best_weights_back(tmp_path: Path) -> None:
    seen: list[dict[str, torch.Tensor]] = []
    model = _model()
    config = _config(max_steps=6, eval_every=2, load_best_at_end=True)
    evaluate = _scripted([0.2, 0.7, 0.1], seen)
    _trainer(tmp_path, model, config=config, evaluate=evaluate, primary_metric="score").train()
    assert all(torch.equal(v, seen[1][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, seen[2][k]) for k, v in model.state_dict().items())


def test_evaluate_must_return_numbers(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, config=_config(max_steps=1), evaluate=lambda m: {"label": "good"})
    with pytest.raises(TrainingError, match="not a number"):
        trainer.train()
