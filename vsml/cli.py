"""`vsml` command line: train, evaluate, presets, import-seed.

The CLI is an entry point: it decides where the library's metrics go (files
in the output directory, a progress bar) and turns bad input into a one-line
reason and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vsml import config as cfg
from vsml.data import DatasetNotFoundError
from vsml.evaluation import LearningCurve
from vsml.training import Callbacks, Trainer, config_from_checkpoint

CURVE_COLUMNS = ["meta_step", "dataset", "learner", "inner_step", "accuracy", "loss"]


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: never a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint file, or a run directory's latest one.

    Loaded with weights_only=True: a checkpoint from elsewhere cannot run code.
    """
    if path.is_dir():
        path = path / "checkpoints" / "latest.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{path} is not a readable VSML checkpoint ({err})") from err
    needed = {"format", "iteration", "params", "optimizer", "generator", "config"}
    if not isinstance(checkpoint, dict) or not needed <= set(checkpoint):
        raise ValueError(f"{path} is not a VSML checkpoint (expected keys {needed})")
    return checkpoint


class RunDirectory(Callbacks):
    """Writes a run's outputs into one directory and drives a progress bar."""

    def __init__(
        self,
        out: Path,
        total: int,
        progress: bool = True,
        time_limit_s: float | None = None,
    ) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.bar = None
        # A time-limited run ends on the clock: the bar then counts seconds, so
        # its ETA is the real one (iterations are shown beside it).
        self.time_limit_s = time_limit_s
        if progress:
            from tqdm import tqdm

            unit, size = ("s", round(time_limit_s)) if time_limit_s else ("it", total)
            self.bar = tqdm(total=size, unit=unit, desc="meta-train", file=sys.stderr)
        self.latest_accuracy: dict[str, float] = {}
        self.curves: dict[int, list[LearningCurve]] = {}

    def on_metrics(self, iteration: int, metrics: dict[str, float]) -> None:
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        if self.bar is not None:
            if self.time_limit_s:
                self.bar.n = min(round(metrics["elapsed_s"]), self.bar.total)
            else:
                self.bar.n = iteration
            self.bar.set_postfix(
                it=iteration, loss=f"{metrics['meta_loss']:.3f}", **self.latest_accuracy
            )

    def on_meta_test(self, iteration: int, curves: list[LearningCurve]) -> None:
        self.curves[iteration] = curves
        path = self.out / "meta_test.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(CURVE_COLUMNS)
            for curve in curves:
                pairs = zip(curve.accuracy.tolist(), curve.loss.tolist(), strict=True)
                for step, (acc, loss) in enumerate(pairs):
                    row = [iteration, curve.dataset, curve.learner, step]
                    writer.writerow(row + [f"{acc:.6g}", f"{loss:.6g}"])
        self.latest_accuracy = {
            c.dataset: f"{c.mean_accuracy:.3f}" for c in curves if c.learner == "vsml"
        }

    def on_checkpoint(self, iteration: int, checkpoint: dict[str, Any]) -> None:
        folder = self.out / "checkpoints"
        atomic_save(checkpoint, folder / f"iter-{iteration:06d}.pt")
        atomic_save(checkpoint, folder / "latest.pt")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def curve_table(curves: list[LearningCurve]) -> str:
    """Mean and last-100-step accuracy per dataset and learner."""
    lines = [f"{'dataset':<16}{'learner':<8}{'mean acc':>10}{'last-100 acc':>14}"]
    for c in curves:
        lines.append(
            f"{c.dataset:<16}{c.learner:<8}"
            f"{c.mean_accuracy:>10.3f}{c.last100_accuracy:>14.3f}"
        )
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    checkpoint = None
    if args.resume:
        # A resumed run continues its saved config; mixing in changes would
        # make its history describe two different experiments.
        if args.config or args.set:
            raise ValueError("--resume continues the saved config: drop --config/--set")
        if not (out / "checkpoints" / "latest.pt").is_file():
            raise FileNotFoundError(
                f"nothing to resume: no {out}/checkpoints/latest.pt"
            )
        checkpoint = load_checkpoint(out)
        config = config_from_checkpoint(checkpoint)
    else:
        config = cfg.load_config(args.config, args.set)
    trainer = Trainer(config, checkpoint=checkpoint)  # loads data: fails early
    _write_text(out / "config.yaml", cfg.to_yaml(config))
    limit = config.training.time_limit_minutes
    sink = RunDirectory(
        out, config.training.num_iterations, not args.no_progress,
        time_limit_s=60 * limit if limit else None,
    )  # fmt: skip
    trainer.callbacks = sink
    try:
        summary = trainer.run()
    finally:
        sink.close()
    _write_text(out / "summary.json", json.dumps(vars(summary), indent=2) + "\n")
    steps = sorted(sink.curves)
    if steps and steps[0] != steps[-1]:
        print(f"Meta-test before meta-training (iteration {steps[0]}):")
        print(curve_table(sink.curves[steps[0]]) + "\n")
    if steps:
        print(f"Meta-test after {summary.iterations} iterations:")
        print(curve_table(sink.curves[steps[-1]]))
    print(f"\nOutputs in {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(Path(args.checkpoint))
    base = config_from_checkpoint(checkpoint).model_dump(mode="json")
    for text in args.set:
        base = cfg.deep_merge(base, cfg.parse_override(text))
    config = cfg.validate(base)
    trainer = Trainer(config, checkpoint=checkpoint)
    sink = RunDirectory(Path(args.out), 0, progress=False) if args.out else None
    if sink is not None:
        trainer.callbacks = sink
    curves = trainer.meta_test()
    print(curve_table(curves))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name in cfg.preset_names():
        text = cfg.resolve_config_path(name).read_text()
        first = text.splitlines()[0].lstrip("# ") if text else ""
        print(f"{name:<22}{first}")
    return 0


def cmd_import_seed(args: argparse.Namespace) -> int:
    from vsml import seed

    config = cfg.load_config(args.config, args.set)
    checkpoint = seed.checkpoint_from_npz(Path(args.params), config)
    out = Path(args.out)
    atomic_save(checkpoint, out / "checkpoints" / "latest.pt")
    _write_text(out / "config.yaml", cfg.to_yaml(config))
    print(
        f"Imported {len(checkpoint['params'])} tensors into {out}/checkpoints/latest.pt"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="meta-train a VSML learner")
    train.add_argument("--config", action="append", default=[], metavar="FILE")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--out", required=True, metavar="DIR")
    train.add_argument("--resume", action="store_true", help="continue DIR's run")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="meta-test a checkpoint")
    evaluate.add_argument("--checkpoint", required=True, metavar="FILE")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    evaluate.add_argument("--out", metavar="DIR", help="also write meta_test.csv here")
    evaluate.set_defaults(func=cmd_evaluate)

    presets = sub.add_parser("presets", help="list the configs in configs/")
    presets.set_defaults(func=cmd_presets)

    imp = sub.add_parser("import-seed", help="import the JAX seed's parameters")
    imp.add_argument("params", metavar="PARAMS.npz")
    imp.add_argument("--config", action="append", default=[], metavar="FILE")
    imp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    imp.add_argument("--out", required=True, metavar="DIR")
    imp.set_defaults(func=cmd_import_seed)
    return parser


USER_ERRORS: tuple[type[Exception], ...] = (
    cfg.ConfigError,
    DatasetNotFoundError,
    ValueError,
    OSError,  # missing files, an --out that is a file, unreadable inputs
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except USER_ERRORS as err:
        reason = " ".join(str(err).split())  # one line, whatever the message
        print(f"vsml {args.command}: error: {reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vsml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
