"""The `vsml` command line: outputs of a run, resume, and bad input."""

import csv
import json

import pytest
import torch

from tests.conftest import TINY
from vsml.cli import main

SETS = [arg for item in TINY for arg in ("--set", item)]


def test_train_writes_every_output(tmp_path, capsys):
    """train writes config, metrics, meta-test curves, checkpoints and summary."""
    out = tmp_path / "run"
    code = main(
        [
            "train",
            *SETS,
            "--set",
            "training.num_iterations=3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    for name in [
        "config.yaml",
        "metrics.jsonl",
        "meta_test.csv",
        "summary.json",
        "checkpoints/latest.pt",
        "checkpoints/iter-000003.pt",
    ]:
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2, 3]
    with open(out / "meta_test.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert set(rows[0]) == {
        "meta_step",
        "dataset",
        "learner",
        "inner_step",
        "accuracy",
        "loss",
    }
    assert {r["learner"] for r in rows} == {"vsml", "sgd", "adam"}
    assert {r["meta_step"] for r in rows} == {"0", "3"}
    printed = capsys.readouterr().out
    assert "before meta-training" in printed and "after 3 iterations" in printed
    assert json.loads((out / "summary.json").read_text())["iterations"] == 3


def test_resume_continues_from_latest_checkpoint(tmp_path):
    """--resume picks up at the last checkpoint's iteration."""
    out = tmp_path / "run"
    args = ["train", *SETS, "--out", str(out), "--no-progress"]
    assert main([*args, "--set", "training.num_iterations=2"]) == 0
    checkpoint = torch.load(out / "checkpoints/latest.pt", weights_only=False)
    assert checkpoint["iteration"] == 2
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2  # the resumed config's budget was reached


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--config", "nope", "--out", "X"], "neither a file nor a preset"),
        (["train", "--set", "model.mesage_size=3", "--out", "X"], "did you mean"),
        (["train", "--set", "data.train=[{name: kmnist}]", "--out", "X"], "kmnist"),
        (["evaluate", "--checkpoint", "missing.pt"], "no checkpoint at"),
        (["evaluate", "--checkpoint", "GARBAGE"], "not a readable VSML checkpoint"),
        (["train", "--set", "data.image_size=[0,0]", "--out", "X"], "equal to 1"),
        (["train", "--set", "optimizer.learning_rate=.inf", "--out", "X"], "finite"),
        (["train", *SETS, "--out", "GARBAGE"], "File exists"),
        (["train", "--out", "X", "--resume"], "nothing to resume"),
        (["train", "--out", "X", "--resume", "--set", "seed=1"], "drop --config/--set"),
        (["import-seed", "GARBAGE", "--out", "X"], "not an .npz of arrays"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(tmp_path, capsys, argv, message):
    """Bad input gives exit status 2 and a one-line reason on stderr."""
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04not a checkpoint at all")
    argv = [a.replace("X", str(tmp_path / "o")) for a in argv]
    argv = [a.replace("GARBAGE", str(garbage)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_presets_lists_quick(capsys):
    assert main(["presets"]) == 0
    assert "quick" in capsys.readouterr().out
