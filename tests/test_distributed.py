"""Runs spread over processes with torch.distributed (gloo on the CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import TINY
from tests.services import free_port
from vsml import distributed
from vsml.config import ConfigError, load_config
from vsml.training import Trainer

STEPS = 3


def _config(*extra: str):
    return load_config(overrides=[*TINY, "optimizer.population_size=5", *extra])


def _train(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    """The first meta-gradient, then the meta-parameters after each step."""
    step = (
        trainer._es_step
        if trainer.config.optimizer.type == "es"
        else (trainer._backprop_step)
    )
    generator_state = trainer.generator.get_state()
    data_state = trainer.data_generator.get_state()
    history = [step().grads]
    trainer.generator.set_state(generator_state)  # train from the same draws
    trainer.data_generator.set_state(data_state)
    for _ in range(STEPS):
        trainer.train_step()
        history.append({k: v.clone() for k, v in trainer.params.items()})
    return history


def _rank(rank: int, world: int, port: int, out: str, extra: tuple[str, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), WORLD_SIZE=str(world))  # fmt: skip
    comm = distributed.from_environment(torch.device("cpu"))
    try:
        trainer = Trainer(_config(*extra), comm=comm)
        history = _train(trainer)
        torch.save(history, Path(out) / f"rank{rank}.pt")
    finally:
        comm.close()


def _run_two(tmp_path: Path, *extra: str) -> list[list[dict[str, torch.Tensor]]]:
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path), extra), nprocs=2)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize(
    "extra",
    [(), ("optimizer.fitness_shaping=centered_ranks",),
     ("optimizer.type=backprop", "optimizer.learning_rate=0.01")],
    ids=["es", "es-ranks", "backprop"],
)  # fmt: skip
def test_two_processes_match_one(tmp_path: Path, extra: tuple[str, ...]) -> None:
    """2 processes give the meta-gradient and meta-parameters of 1 (5 split 3+2).

    Float sums in another order differ in the last bits; Adam turns that into
    up to ~1e-4 on parameters whose gradient is near zero.
    """
    single = _train(Trainer(_config(*extra)))
    ranks = _run_two(tmp_path, *extra)
    for entry in range(STEPS + 1):
        for name, value in single[entry].items():
            for rank in ranks:
                torch.testing.assert_close(
                    rank[entry][name], value, atol=1e-6 if entry == 0 else 2e-4,
                    rtol=1e-4,
                )  # fmt: skip


def test_share_splits_exactly() -> None:
    """Shares cover every member once; the first ranks take one more."""
    sizes = [len(range(20)[distributed.share(20, r, 6)]) for r in range(6)]
    assert sizes == [4, 4, 3, 3, 3, 3]
    covered = [i for r in range(6) for i in range(20)[distributed.share(20, r, 6)]]
    assert covered == list(range(20))


def test_population_smaller_than_the_world_is_refused() -> None:
    """Fewer pairs than processes is an error, never a silent shrink."""
    with pytest.raises(ConfigError, match="world_size=8"):
        _config("distributed.world_size=8")


def test_rank_data_assigns_datasets_by_repeat() -> None:
    """rank_data gives consecutive ranks their datasets; repeats must fit."""
    config = _config(
        "distributed.world_size=3",
        "distributed.rank_data=[{train: [{name: digits}], repeat: 2},"
        " {train: [{name: mnist}]}]",
    )
    names = [[d.name for d in config.train_datasets(r)] for r in range(3)]
    assert names == [["digits"], ["digits"], ["mnist"]]
    with pytest.raises(ConfigError, match="add up to 2"):
        _config(
            "distributed.world_size=3",
            "distributed.rank_data=[{train: [{name: digits}], repeat: 2}]",
        )
