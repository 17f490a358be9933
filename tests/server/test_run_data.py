"""What a run produced, over the REST API: metrics, curves, checkpoints, logs."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from server import queries, records
from server.downsample import downsample
from tests.server.conftest import Lab


def metrics(lab: Lab, run_id: int, **params) -> dict:
    response = lab.client.get(f"/api/runs/{run_id}/metrics", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_metrics_returns_every_key_by_default(lab: Lab):
    """Without ?keys= every metric comes back, steps in order."""
    run = lab.run()
    lab.add_metrics(run["id"], "meta_loss", {2: 0.5, 0: 1.0, 1: 0.75})
    lab.add_metrics(run["id"], "elapsed_s", {0: 3.0})
    assert metrics(lab, run["id"]) == {
        "elapsed_s": {"steps": [0], "values": [3.0]},
        "meta_loss": {"steps": [0, 1, 2], "values": [1.0, 0.75, 0.5]},
    }


def test_metrics_returns_only_chosen_keys(lab: Lab):
    """?keys=a,b returns exactly those keys."""
    run = lab.run()
    for key in ("a", "b", "c"):
        lab.add_metrics(run["id"], key, {0: 1.0})
    assert sorted(metrics(lab, run["id"], keys="a,c")) == ["a", "c"]


def test_nan_metric_is_served_as_null(lab: Lab):
    """A NaN loss is stored as NULL and served as JSON null."""
    run = lab.run()
    lab.add_metrics(run["id"], "meta_loss", {0: math.nan, 1: 1.0})
    assert metrics(lab, run["id"])["meta_loss"]["values"] == [None, 1.0]


def test_retried_batch_adds_no_duplicates(lab: Lab):
    """Writing the same batch twice leaves one point per (run, key, step)."""
    run = lab.run()
    lab.add_metrics(run["id"], "meta_loss", {0: 1.0, 1: 0.5})
    lab.add_metrics(run["id"], "meta_loss", {0: 1.0, 1: 0.5})
    assert metrics(lab, run["id"])["meta_loss"]["steps"] == [0, 1]


def test_metrics_csv_has_one_row_per_point(lab: Lab):
    """?format=csv is a downloadable key,step,value table."""
    run = lab.run()
    lab.add_metrics(run["id"], "meta_loss", {0: 1.0, 1: math.nan})
    response = lab.client.get(f"/api/runs/{run['id']}/metrics?format=csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows == [["key", "step", "value"], ["meta_loss", "0", "1.0"],
                    ["meta_loss", "1", ""]]  # fmt: skip


def test_downsampled_metrics_keep_extremes_and_last_point(lab: Lab):
    """max_points thins a long series but keeps its peak, its dip and its end."""
    run = lab.run()
    values = {step: math.sin(step / 40) for step in range(3000)}
    values[1234], values[2345] = 9.0, -9.0
    lab.add_metrics(run["id"], "meta_loss", values)
    thinned = metrics(lab, run["id"], max_points=60)["meta_loss"]
    assert len(thinned["steps"]) <= 60
    assert thinned["steps"] == sorted(thinned["steps"])
    kept = dict(zip(thinned["steps"], thinned["values"], strict=True))
    assert kept[1234] == 9.0 and kept[2345] == -9.0
    assert kept[2999] == values[2999]
    assert all(values[step] == value for step, value in kept.items())


@pytest.mark.parametrize("max_points", [3, 10, 61, 500])
def test_database_downsampling_equals_the_reference(lab: Lab, max_points: int):
    """The database's thinning equals server.downsample, ties and NULLs too."""
    run = lab.run()
    rng = np.random.default_rng(max_points)
    steps = np.unique(rng.integers(0, 5000, 900))  # uneven gaps
    values = rng.integers(0, 6, len(steps)).astype(float)  # many ties
    values[rng.random(len(steps)) < 0.2] = np.nan  # stored as NULL
    values[-1] = np.nan
    points = dict(zip(steps.tolist(), values.tolist(), strict=True))
    lab.add_metrics(run["id"], "k", points)
    got = metrics(lab, run["id"], max_points=max_points)["k"]
    want_steps, want_values = downsample(steps, values, max_points)
    assert got["steps"] == want_steps.tolist()
    assert got["values"] == [None if np.isnan(v) else v for v in want_values]


def test_curves_latest_all_and_one_meta_step(lab: Lab):
    """meta_step=latest (default), all, or N chooses which curves come back."""
    run = lab.run()
    for meta_step in (0, 10):
        for learner in ("vsml", "sgd"):
            lab.add_curve(run["id"], meta_step, "mnist", learner, steps=3)
    path = f"/api/runs/{run['id']}/curves"

    def meta_steps_of(**params) -> set[int]:
        body = lab.client.get(path, params=params).json()
        assert body["meta_steps"] == [0, 10]
        assert body["columns"] == queries.CURVE_COLUMNS
        return {row[0] for row in body["rows"]}

    assert meta_steps_of() == {10}
    assert meta_steps_of(meta_step="all") == {0, 10}
    assert meta_steps_of(meta_step="0") == {0}
    rows = lab.client.get(path).json()["rows"]
    assert len(rows) == 6
    assert rows[0] == [10, "mnist", "sgd", 0, 0.0, 2.0]
    missing = lab.client.get(path, params={"meta_step": "5"})
    assert missing.status_code == 404
    assert "no meta-test at iteration 5; meta-tests at: 0, 10" in missing.text


def test_curves_filter_by_dataset(lab: Lab):
    """?dataset= keeps one dataset's curves."""
    run = lab.run()
    lab.add_curve(run["id"], 5, "mnist", "vsml", steps=2)
    lab.add_curve(run["id"], 5, "fashion_mnist", "vsml", steps=2)
    path = f"/api/runs/{run['id']}/curves?dataset=fashion_mnist"
    rows = lab.client.get(path).json()["rows"]
    assert {row[1] for row in rows} == {"fashion_mnist"}


def test_curves_of_a_fresh_run_are_empty(lab: Lab):
    """A run without meta-tests yet has no curves (and no error)."""
    run = lab.run()
    body = lab.client.get(f"/api/runs/{run['id']}/curves").json()
    assert (body["meta_steps"], body["rows"]) == ([], [])


def test_curves_csv_has_the_curve_columns(lab: Lab):
    """?format=csv is a table headed by the curve columns."""
    run = lab.run()
    lab.add_curve(run["id"], 5, "mnist", "adam", steps=2)
    response = lab.client.get(f"/api/runs/{run['id']}/curves?format=csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == queries.CURVE_COLUMNS
    assert rows[1:] == [["5", "mnist", "adam", "0", "0.0", "2.0"],
                        ["5", "mnist", "adam", "1", "0.1", "1.9"]]  # fmt: skip


def test_checkpoint_is_listed_and_downloaded(lab: Lab, tmp_path: Path):
    """A recorded checkpoint is listed with its size and downloads byte for byte."""
    run = lab.run()
    weights = tmp_path / "checkpoint-000040.pt"
    weights.write_bytes(b"\x00weights\xff" * 100)
    with lab.session() as session:
        records.add_checkpoint(session, run["id"], 40, str(weights), 1000)
    listed = lab.client.get(f"/api/runs/{run['id']}/checkpoints").json()
    assert [(c["iteration"], c["size_bytes"]) for c in listed] == [(40, 1000)]
    download = lab.client.get(listed[0]["download_url"])
    assert download.status_code == 200
    assert download.content == weights.read_bytes()
    assert "attachment" in download.headers["content-disposition"]


def test_logs_page_by_sequence_number(lab: Lab):
    """after= and limit= page through the log lines in order."""
    run = lab.run()
    lab.add_logs(run["id"], [f"line {i}" for i in range(25)])
    path = f"/api/runs/{run['id']}/logs"

    def seqs(**params) -> list[int]:
        return [x["seq"] for x in lab.client.get(path, params=params).json()]

    assert seqs(limit=10) == list(range(10))
    assert seqs(after=9, limit=10) == list(range(10, 20))
    assert seqs(after=19, limit=10) == list(range(20, 25))
    assert lab.client.get(path).json()[3]["text"] == "line 3"


def test_config_as_yaml_and_json_agree(lab: Lab):
    """The resolved config reads the same as YAML (default) and as JSON."""
    run = lab.run(overrides=["training.log_every=3"])
    as_yaml = lab.client.get(f"/api/runs/{run['id']}/config")
    as_json = lab.client.get(f"/api/runs/{run['id']}/config?format=json")
    assert as_yaml.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(as_yaml.text) == as_json.json()
    assert as_json.json()["training"]["log_every"] == 3


def test_snapshot_holds_everything_up_to_its_cursor(lab: Lab):
    """A snapshot has the run, its metrics, latest curves and logs, and a cursor."""
    run = lab.run()
    lab.add_metrics(run["id"], "meta_loss", {0: 1.0, 1: 0.5})
    lab.add_curve(run["id"], 0, "mnist", "vsml", steps=2)
    lab.add_curve(run["id"], 10, "mnist", "vsml", steps=2)
    lab.add_logs(run["id"], ["started"])
    snapshot = lab.client.get(f"/api/runs/{run['id']}/snapshot").json()
    with lab.session() as session:
        assert snapshot["cursor"] == str(queries.current_cursor(session, run["id"]))
    assert snapshot["run"]["id"] == run["id"]
    assert snapshot["metrics"]["meta_loss"]["values"] == [1.0, 0.5]
    assert {row[0] for row in snapshot["curves"]["rows"]} == {10}
    assert [line[2] for line in snapshot["logs"]] == ["started"]


def test_snapshot_carries_the_newest_log_lines(lab: Lab):
    """Past 10,000 lines a snapshot keeps the newest, so none fall in a gap."""
    run = lab.run()
    lab.add_logs(run["id"], [f"line {i}" for i in range(10_005)])
    snapshot = lab.client.get(f"/api/runs/{run['id']}/snapshot").json()
    seqs = [line[0] for line in snapshot["logs"]]
    assert seqs == list(range(5, 10_005))
