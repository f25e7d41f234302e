"""The ``mlflow`` tracker: what a run records, MLflow's limits, and the unreachable-store fallback."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from compresskit_plugins.mlflow_tracker import (
    MlflowTracker,
    TrackingUnavailableError,
    UntrackedRunWarning,
    read_journal,
    replay_journal,
)
from compresskit_plugins.mlflow_tracker.values import MAX_KEY_CHARS, MAX_VALUE_CHARS, param_strings

from compresskit import ConfigError, Registry


def closed_port_uri() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def client_for(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module: creating one runs MLflow's migrations (seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def test_param_strings_flatten_render_and_truncate() -> None:
    long_key = "k" * (MAX_KEY_CHARS + 40)
    strings = param_strings(
        {"plan": {"layer.0": {"a_shape": (4, 8), "rank": 2}}, "text": "x" * 7000, long_key: 1, "none": None}
    )
    assert strings["plan.layer.0.a_shape"] == "[4, 8]"
    assert strings["plan.layer.0.rank"] == "2"
    assert len(strings["text"]) == MAX_VALUE_CHARS and strings["text"].endswith("[truncated: 7000 chars]")
    assert strings["none"] == "None"
    shortened = [k for k in strings if k.startswith("kkk")]
    assert len(shortened) == 1 and len(shortened[0]) <= MAX_KEY_CHARS and shortened[0] != long_key


def test_a_run_records_params_metrics_tags_and_artifacts(store: str, tmp_path: Path) -> None:
    tracker = Registry.from_plugins().create(
        "tracker", "mlflow", {"tracking_uri": store, "experiment": "unit", "log_models": False}
    )
    run_id = tracker.start_run("kb21-sst2", tags={"strategy": "kroneckerbert21", "task": "sst2"})
    assert run_id and tracker.tracked
    tracker.log_params({"strategy": {"preset": "kroneckerbert21", "groups": ["ffn", "attention"]}})
    for step, loss in enumerate([0.9, 0.5, 0.3]):
        tracker.log_metrics({"train/loss": loss, "train/lr": 1e-4, "flag": True}, step=step)
    tracker.log_metrics({"student/accuracy": 0.81, "params": 1234})
    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"0" * 10)
    tracker.log_artifact(tmp_path / "plan.json", "report")
    tracker.log_artifact(tmp_path / "model", "model")  # skipped: log_models = false
    tracker.set_tags({"teacher": "minilm"})
    tracker.end_run()

    client = client_for(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "kb21-sst2"
    assert run.data.params["strategy.preset"] == "kroneckerbert21"
    assert run.data.params["strategy.groups"] == '["ffn", "attention"]'
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert "flag" not in run.data.metrics  # booleans are not metrics
    assert run.data.metrics["student/accuracy"] == 0.81
    tags = run.data.tags
    assert tags["strategy"] == "kroneckerbert21" and tags["teacher"] == "minilm"
    assert len(tags["git_commit"]) in (40, len("unknown")) and tags["compresskit_version"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"report"}
    location = client.get_experiment_by_name("unit").artifact_location
    assert Path(store.removeprefix("sqlite:///")).parent.name in location  # beside the database


def test_unknown_option_is_a_config_error_with_suggestion() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'tracking_uri'"):
        Registry.from_plugins().create("tracker", "mlflow", {"tracking_url": "x"})


def test_refused_value_warns_and_keeps_tracking(store: str) -> None:
    tracker = MlflowTracker({"tracking_uri": store, "experiment": "unit"})
    tracker.start_run("relog")
    tracker.log_params({"lr": 1})
    with pytest.warns(UserWarning, match="refused"):
        tracker.log_params({"lr": 2})  # MLflow params are immutable
    assert tracker.tracked
    tracker.end_run()


def test_unreachable_server_falls_back_to_a_journal_then_replays(store: str, tmp_path: Path) -> None:
    tracker = MlflowTracker(
        {"tracking_uri": closed_port_uri(), "fallback_dir": str(tmp_path), "probe_timeout_s": 1.0}
    )
    with pytest.warns(UntrackedRunWarning, match="NOT TRACKED"):
        assert tracker.start_run("offline", tags={"strategy": "kb8"}) is None
    assert not tracker.tracked
    tracker.log_params({"a": {"b": 1}})
    tracker.log_metrics({"loss": 0.5}, step=3)
    artifact = tmp_path / "report.json"
    artifact.write_text("{}")
    tracker.log_artifact(artifact, "report")
    tracker.end_run("FINISHED")
    assert tracker.journal_path is not None
    events = read_journal(tracker.journal_path)
    assert [e["event"] for e in events] == ["start", "params", "metrics", "artifact", "end"]
    assert events[2]["metrics"] == {"loss": 0.5} and events[2]["step"] == 3

    target = MlflowTracker({"tracking_uri": store, "experiment": "replayed"})
    run_id = replay_journal(tracker.journal_path, target)
    run = client_for(store).get_run(run_id)
    assert run.data.params["a.b"] == "1" and run.data.metrics["loss"] == 0.5
    assert run.data.tags["strategy"] == "kb8" and run.info.status == "FINISHED"


def test_fail_if_unreachable_stops_before_anything_starts(tmp_path: Path) -> None:
    tracker = MlflowTracker(
        {"tracking_uri": closed_port_uri(), "fail_if_unreachable": True, "fallback_dir": str(tmp_path)}
    )
    with pytest.raises(TrackingUnavailableError, match="Nothing was started"):
        tracker.start_run("x")
    assert list(tmp_path.iterdir()) == []


def test_missing_sqlite_folder_is_reported(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}"
    tracker = MlflowTracker({"tracking_uri": uri, "fail_if_unreachable": True})
    with pytest.raises(TrackingUnavailableError, match="does not exist"):
        tracker.start_run("x")


class BrokenClient:
    def log_batch(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("server went away")

    def set_terminated(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("server went away")


def test_store_failing_mid_run_switches_to_the_journal(store: str, tmp_path: Path) -> None:
    tracker = MlflowTracker({"tracking_uri": store, "experiment": "unit", "fallback_dir": str(tmp_path)})
    tracker.start_run("flaky")
    tracker._client = BrokenClient()  # the server dies after the run started
    with pytest.warns(UntrackedRunWarning, match="server went away"):
        tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.log_metrics({"loss": 0.5}, step=2)  # no exception, no second warning needed
    tracker.end_run()
    assert tracker.journal_path is not None
    events = read_journal(tracker.journal_path)
    assert [e["event"] for e in events] == ["start", "metrics", "metrics", "end"]
    assert [e["step"] for e in events if e["event"] == "metrics"] == [1, 2]
