"""Image-classification data sets as in-memory tensors in [0, 1].

:func:`load_dataset` returns an :class:`ArrayDataset` (images N x C x H x W float32 in
[0, 1], labels int64) for one of the registered data sets (:data:`DATASETS`):

``digits``
    scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16 scaled by
    1/16), split 3:1 into train/test by a fixed stratified split. Needs no files.
``mnist``, ``fashion-mnist``
    The standard IDX files (gzip-compressed or not) of LeCun et al. (1998) and
    Xiao et al. (2017).
``cifar10``
    The python-version tarball of Krizhevsky (2009), read with a restricted unpickler
    that can only rebuild numpy arrays (see :class:`RestrictedUnpickler`).

Files are looked for in ``data_dir``, then ``$GTD_DATA_DIR``, then the user cache
(``$XDG_CACHE_HOME`` or ``~/.cache``, then ``gametheory-defense``), each directly and in a
``<name>/`` subfolder; ``download=True`` fetches missing files from the canonical mirrors
into the cache, checking the published MD5 checksums. Other modules accept their ``data``
arguments through :func:`as_tensors`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import io
import logging
import os
import pickle
import pickletools
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from gametheory_defense.errors import DataError

__all__ = [
    "DATASETS",
    "SPLITS",
    "DATA_DIR_ENV",
    "ArrayDataset",
    "DatasetSpec",
    "RemoteFile",
    "RestrictedUnpickler",
    "as_tensors",
    "default_cache_dir",
    "download_file",
    "load_dataset",
    "search_dirs",
]

logger = logging.getLogger(__name__)

#: The splits every data set provides.
SPLITS: tuple[str, str] = ("train", "test")
#: Environment variable naming a directory searched for data files.
DATA_DIR_ENV = "GTD_DATA_DIR"

_CHUNK = 1 << 20
# A CIFAR-10 batch file is about 31 MB; anything far larger is not one (bounds memory).
_MAX_CIFAR_MEMBER_BYTES = 64 << 20
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_PIXELS = 3 * 32 * 32
# Opcodes that name objects without going through Unpickler.find_class.
_FORBIDDEN_OPCODES = frozenset({"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})


# --------------------------------------------------------------------------------------
# The in-memory data set
# --------------------------------------------------------------------------------------


class ArrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A labelled image data set held as two tensors.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` floating-point images in [0, 1].
    labels : torch.Tensor
        ``(N,)`` integer class labels in ``[0, num_classes)``; stored as int64.
    num_classes : int, optional
        Number of classes; by default ``max(labels) + 1`` (at least 2).
    name : str, optional
        Data set name (for messages and checkpoints).
    split : str, optional
        ``"train"`` or ``"test"``.

    Attributes
    ----------
    images, labels : torch.Tensor
    num_classes : int
    input_shape : tuple of int
        ``(C, H, W)`` of one image.
    name, split : str

    Raises
    ------
    ValueError
        Wrong shapes or dtypes, pixel values outside [0, 1], or labels out of range.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        num_classes: int | None = None,
        name: str = "custom",
        split: str = "train",
    ) -> None:
        images, labels = _validate_pair(images, labels, allow_empty=True)
        if num_classes is None:
            num_classes = max(2, int(labels.max()) + 1) if len(labels) else 2
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        num_classes = int(num_classes)
        if len(labels) and int(labels.max()) >= num_classes:
            raise ValueError(
                f"label {int(labels.max())} out of range for num_classes={num_classes}"
            )
        self.images: torch.Tensor = images
        self.labels: torch.Tensor = labels
        self.num_classes: int = num_classes
        self.input_shape: tuple[int, int, int] = tuple(images.shape[1:])  # type: ignore[assignment]
        self.name: str = name
        self.split: str = split

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image, label)``: a ``(C, H, W)`` tensor and a 0-d int64 tensor."""
        return self.images[index], self.labels[index]

    def _derived(self, images: torch.Tensor, labels: torch.Tensor) -> ArrayDataset:
        return ArrayDataset(
            images, labels, num_classes=self.num_classes, name=self.name, split=self.split
        )

    def subset(self, n_or_indices: int | Sequence[int] | np.ndarray | torch.Tensor) -> ArrayDataset:
        """A new data set with the first ``n`` items, or the items at the given indices.

        Parameters
        ----------
        n_or_indices : int or sequence of int
            An integer ``n`` takes the first ``n`` items (with a warning, all of them when
            ``n`` exceeds the size); a 1-D sequence of indices in ``[0, N)`` takes those.

        Returns
        -------
        ArrayDataset
            Same ``name``, ``split`` and ``num_classes``. The first ``n`` items share
            memory with this data set (views); indexed items are copies.
        """
        n_items = len(self)
        if isinstance(n_or_indices, (int, np.integer)) and not isinstance(n_or_indices, bool):
            n = int(n_or_indices)
            if n < 0:
                raise ValueError(f"subset size must be >= 0, got {n}")
            if n > n_items:
                warnings.warn(
                    f"asked for {n} items but {self.name} {self.split} has only {n_items}; "
                    f"using all {n_items}",
                    stacklevel=2,
                )
                n = n_items
            return self._derived(self.images[:n], self.labels[:n])
        if isinstance(n_or_indices, torch.Tensor):
            index = n_or_indices
        else:
            index = torch.as_tensor(np.asarray(n_or_indices))
        is_int = not (index.is_floating_point() or index.is_complex() or index.dtype == torch.bool)
        if index.ndim != 1 or (index.numel() and not is_int):
            raise ValueError(
                "subset takes an int or a 1-D sequence of integer indices, got "
                f"{type(n_or_indices).__name__} of shape {tuple(index.shape)}"
            )
        index = index.to(device=self.labels.device, dtype=torch.int64)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_items):
            raise ValueError(
                f"subset indices must lie in [0, {n_items}), got range "
                f"[{int(index.min())}, {int(index.max())}]"
            )
        return self._derived(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> ArrayDataset:
        """A new data set with both tensors on ``device`` (like ``Tensor.to``)."""
        return self._derived(self.images.to(device), self.labels.to(device))

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"device={self.images.device})"
        )


def _validate_pair(
    x: Any, y: Any, *, allow_empty: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and canonicalise an (images, labels) pair; see :func:`as_tensors`."""
    try:
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"data must be convertible to tensors ({exc})") from None
    if x.ndim != 4:
        hint = " (add a channel axis: x[:, None])" if x.ndim == 3 else ""
        raise ValueError(f"images must be N x C x H x W, got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        hint = " (divide uint8 images by 255)" if x.dtype == torch.uint8 else ""
        raise ValueError(f"images must be floating point in [0, 1], got dtype {x.dtype}{hint}")
    if x.dtype == torch.float64:
        x = x.to(torch.float32)
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(
            f"labels must be a 1-D integer tensor, got dtype {y.dtype} and shape {tuple(y.shape)}"
        )
    y = y.to(torch.int64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    if x.shape[0] == 0:
        if allow_empty:
            return x, y
        raise ValueError("data set is empty")
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
        raise ValueError(
            f"images must lie in [0, 1] (normalisation belongs inside the model: "
            f"gametheory_defense.models.Normalize, or the normalize = {{mean, std}} option), got range "
            f"[{lo:.4g}, {hi:.4g}]"
        )
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
    return x, y


def _from_loader(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[type-arg]
    """Concatenate the ``(images, labels)`` batches of a DataLoader."""
    import warnings

    if isinstance(getattr(loader, "sampler", None), torch.utils.data.RandomSampler):
        warnings.warn(
            "the DataLoader shuffles: the evaluation set's order (and its cache keys) change between calls; "
            "pass shuffle=False for reproducible results",
            stacklevel=3,
        )
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for i, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                f"DataLoader batches must be (images, labels) pairs, batch {i} is {type(batch).__name__}"
            )
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]).reshape(-1))
    if not xs:
        raise ValueError("the DataLoader yields no batches")
    try:
        return torch.cat(xs), torch.cat(ys)
    except RuntimeError as exc:
        raise ValueError(f"DataLoader batches have inconsistent shapes ({exc})") from None


def as_tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of ``data`` as validated tensors ``(x, y)``.

    The one way library functions take their ``data`` arguments.

    Parameters
    ----------
    data : ArrayDataset, tuple, Dataset or DataLoader
        An object with ``.images`` and ``.labels`` (an :class:`ArrayDataset`), a tuple
        ``(x, y)`` of tensors or arrays, any map-style data set (``len`` and integer
        indexing) whose items are ``(image, label)`` pairs, or a
        :class:`torch.utils.data.DataLoader` yielding ``(images, labels)`` batches (read
        once, in its order; a shuffling loader gets a warning, since the evaluation set
        then changes between calls).

    Returns
    -------
    x : torch.Tensor
        ``(N, C, H, W)`` floating point in [0, 1] (float64 input becomes float32, the
        models' dtype; other floating dtypes are kept).
    y : torch.Tensor
        ``(N,)`` int64 labels.

    Raises
    ------
    ValueError
        Unsupported type, wrong shapes or dtypes, images outside [0, 1], negative labels,
        mismatched lengths, or no items.
    """
    if hasattr(data, "images") and hasattr(data, "labels"):
        x, y = data.images, data.labels
    elif isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"a data tuple must be (x, y), got a tuple of length {len(data)}")
        x, y = data
    elif isinstance(data, torch.utils.data.DataLoader):
        x, y = _from_loader(data)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        n = len(data)
        if n == 0:
            raise ValueError("data set is empty")
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        for i in range(n):
            item = data[i]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise ValueError(
                    f"data set items must be (image, label) pairs, item {i} is "
                    f"{type(item).__name__}"
                )
            try:
                xs.append(torch.as_tensor(item[0]))
                ys.append(torch.as_tensor(item[1]).reshape(()))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(
                    f"item {i} is not an (image tensor, scalar label) pair ({exc})"
                ) from None
        try:
            x, y = torch.stack(xs), torch.stack(ys)
        except RuntimeError as exc:
            raise ValueError(f"data set items have inconsistent shapes ({exc})") from None
    else:
        raise ValueError(
            "data must be an ArrayDataset, a tuple (x, y), a map-style Dataset of (image, label) pairs "
            f"or a DataLoader, got {type(data).__name__}"
        )
    return _validate_pair(x, y)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One published data file.

    Attributes
    ----------
    name : str
        The published file name (also the name it is downloaded to).
    md5 : str
        MD5 of the published file, as distributed by its authors.
    raw_md5 : str or None
        MD5 of the decompressed content, where known; preferred by ``verify=True`` since
        re-compressed copies of the same data differ in their gzip wrapper.
    alternatives : tuple of str
        Other accepted local names (the uncompressed file, the extracted folder).
    """

    name: str
    md5: str
    raw_md5: str | None = None
    alternatives: tuple[str, ...] = ()

    @property
    def local_names(self) -> tuple[str, ...]:
        """Names looked for on disk, in order."""
        return (self.name, *self.alternatives)


Loader = Callable[["DatasetSpec", str, Mapping[str, Path], bool], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry of :data:`DATASETS`.

    Attributes
    ----------
    name : str
        Registry name.
    description : str
        One line with the source.
    input_shape : tuple of int
        ``(C, H, W)`` of one image.
    num_classes : int
        Number of classes.
    files : mapping
        Split -> the :class:`RemoteFile` objects that split needs (empty: embedded).
    mirrors : tuple of str
        Base URLs tried in order by ``download=True``.
    loader : callable
        ``loader(spec, split, paths, verify) -> (images, labels)`` where ``paths`` maps
        each needed file's published name to the local path found.
    """

    name: str
    description: str
    input_shape: tuple[int, int, int]
    num_classes: int
    files: Mapping[str, tuple[RemoteFile, ...]]
    mirrors: tuple[str, ...]
    loader: Loader


def _idx_files(prefix_md5: Mapping[str, tuple[str, str | None]]) -> dict[str, RemoteFile]:
    return {
        name: RemoteFile(name, md5, raw_md5, alternatives=(name.removesuffix(".gz"),))
        for name, (md5, raw_md5) in prefix_md5.items()
    }


_MNIST = _idx_files(
    {
        # name: (MD5 of the published .gz, MD5 of the decompressed IDX file)
        "train-images-idx3-ubyte.gz": (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte.gz": (
            "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte.gz": (
            "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte.gz": (
            "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
    }
)
_FASHION = _idx_files(
    {
        "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", None),
        "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", None),
        "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", None),
        "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", None),
    }
)
_CIFAR10 = RemoteFile(
    "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", alternatives=(_CIFAR_FOLDER,)
)
_CIFAR_MEMBERS = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


def _idx_split_files(files: Mapping[str, RemoteFile]) -> dict[str, tuple[RemoteFile, ...]]:
    return {
        "train": (files["train-images-idx3-ubyte.gz"], files["train-labels-idx1-ubyte.gz"]),
        "test": (files["t10k-images-idx3-ubyte.gz"], files["t10k-labels-idx1-ubyte.gz"]),
    }


# --------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_md5(path: Path, actual: str, expected: str, what: str) -> None:
    if actual != expected:
        raise DataError(
            f"{path}: MD5 of the {what} is {actual}, expected {expected}; the file is "
            "corrupt or not the published one: delete it and load again with download=True"
        )


def _read_maybe_gzip(path: Path, remote: RemoteFile, *, verify: bool) -> bytes:
    """The bytes of ``path``, gunzipped if it is gzip data, optionally verified."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    is_gzip = raw[:2] == b"\x1f\x8b"
    if path.name.endswith(".gz") and not is_gzip:
        raise DataError(
            f"{path}: not a gzip file (bad magic bytes); the file is corrupt: delete it and "
            "download it again"
        )
    if verify and not remote.raw_md5:
        if path.name == remote.name:
            _check_md5(path, _md5(raw), remote.md5, "published file")
        else:
            warnings.warn(
                f"cannot verify {path}: only the MD5 of {remote.name} is known", stacklevel=4
            )
    if is_gzip:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{path}: bad gzip data ({exc}); the file is truncated or corrupt: delete it "
                "and download it again"
            ) from None
    if verify and remote.raw_md5:
        _check_md5(path, _md5(raw), remote.raw_md5, "decompressed content")
    return raw


def _parse_idx(path: Path, raw: bytes, *, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (LeCun et al., 1998) of ``ndim`` dimensions.

    IDX layout: two zero bytes, a type code (0x08 = unsigned byte), the number of
    dimensions, that many big-endian uint32 sizes, then the data in row-major order.
    """
    expected_magic = 0x0800 + ndim
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX file (truncated)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {ndim}-D); not the expected IDX file or corrupt"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(
            f"{path}: IDX header says shape {dims} ({expected} bytes) but the data has "
            f"{len(raw)} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _to_float(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8.astype(np.float32)).div_(255.0)


def _check_labels(path: Path | str, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(
            f"{path}: label value {int(labels.max())} out of range 0..{num_classes - 1}; the "
            "file is corrupt"
        )


def _load_idx(
    spec: DatasetSpec, split: str, paths: Mapping[str, Path], verify: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    image_file, label_file = spec.files[split]
    image_path, label_path = paths[image_file.name], paths[label_file.name]
    images = _parse_idx(image_path, _read_maybe_gzip(image_path, image_file, verify=verify), ndim=3)
    labels = _parse_idx(label_path, _read_maybe_gzip(label_path, label_file, verify=verify), ndim=1)
    if images.shape[1:] != spec.input_shape[1:]:
        raise DataError(
            f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, expected "
            f"{spec.input_shape[1]}x{spec.input_shape[2]} for {spec.name}"
        )
    if len(labels) != len(images):
        raise DataError(
            f"{label_path}: {len(labels)} labels but {image_path.name} has {len(images)} "
            "images; one of the files is truncated or they belong to different splits"
        )
    _check_labels(label_path, labels, spec.num_classes)
    return _to_float(images[:, None]), torch.from_numpy(labels.astype(np.int64))


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays, for the CIFAR-10 batch files.

    Why this is safe: a pickle can run code only by calling an object it first obtains by
    name. A pickle names objects with the ``GLOBAL``, ``STACK_GLOBAL`` and ``INST``/``OBJ``
    opcodes, which are all resolved through :meth:`find_class`, and with the ``copyreg``
    extension codes ``EXT1/2/4`` and persistent ids ``PERSID/BINPERSID``, which can bypass
    it (the extension cache is consulted first) and which :meth:`load` therefore refuses
    by scanning the opcodes before anything is executed (``persistent_load`` refuses as
    well). This :meth:`find_class` does not import or look anything up: it maps
    exactly four names to objects fixed here -- numpy's ``_reconstruct`` (under its
    numpy 1 and numpy 2 module names), ``numpy.ndarray`` and ``numpy.dtype`` -- and
    raises :class:`DataError` for every other name (``os.system``, ``builtins.eval``,
    dotted attribute paths, ...). The only calls a pickle can then make are to those
    numpy constructors and to ``ndarray.__setstate__``/``dtype.__setstate__``, which
    build arrays and dtypes from plain data and call no Python code. The result is
    checked afterwards (a dict holding a uint8 array and integer labels). The worst a
    crafted file can do is ask for memory, which is bounded by refusing members larger
    than 64 MiB.
    """

    def __init__(self, file: BinaryIO, *, encoding: str = "bytes") -> None:
        super().__init__(file, encoding=encoding)
        self._stream = file

    @staticmethod
    @functools.cache
    def _allowed() -> dict[tuple[str, str], Any]:
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        return {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed().get((module, name))
        if obj is None:
            raise DataError(
                f"refusing to unpickle global {module}.{name}: a CIFAR-10 batch may only "
                "contain numpy arrays, bytes, ints and lists"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refusing a pickle with persistent ids: not a CIFAR-10 batch")

    def load(self) -> Any:
        """Scan the opcodes (refusing extension codes and persistent ids), then unpickle."""
        stream = self._stream
        start = stream.tell()
        try:
            for opcode, _arg, _pos in pickletools.genops(stream):
                if opcode.name in _FORBIDDEN_OPCODES:
                    raise DataError(
                        f"refusing pickle opcode {opcode.name}: a CIFAR-10 batch never uses it"
                    )
        except DataError:
            raise
        except Exception as exc:  # malformed opcode stream
            raise pickle.UnpicklingError(f"malformed pickle ({exc})") from None
        stream.seek(start)
        return super().load()


def _parse_cifar_batch(blob: bytes, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3072)`` uint8 and labels ``(N,)`` of one CIFAR-10 python batch."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(blob)).load()
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    except Exception as exc:  # untrusted bytes: any failure means "not a batch file"
        raise DataError(
            f"{where}: not a valid CIFAR-10 batch ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: not a CIFAR-10 batch (a {type(obj).__name__}, not a dict)")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _CIFAR_PIXELS:
        shape = getattr(data, "shape", None)
        raise DataError(
            f"{where}: 'data' must be a uint8 array N x {_CIFAR_PIXELS}, got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}"
        )
    if isinstance(labels, np.ndarray):
        label_array = labels
    elif isinstance(labels, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in labels
    ):
        label_array = np.asarray(labels, dtype=np.int64)
    else:
        raise DataError(f"{where}: 'labels' must be a list of ints, got {type(labels).__name__}")
    if label_array.ndim != 1 or label_array.dtype.kind not in "iu":
        raise DataError(f"{where}: 'labels' must be 1-D integers")
    if len(label_array) != len(data):
        raise DataError(f"{where}: {len(label_array)} labels but {len(data)} images")
    if label_array.size and (int(label_array.min()) < 0 or int(label_array.max()) >= num_classes):
        raise DataError(
            f"{where}: label values must lie in 0..{num_classes - 1}, got "
            f"{int(label_array.min())}..{int(label_array.max())}"
        )
    return data, label_array.astype(np.int64)


def _cifar_member_bytes(path: Path, members: Sequence[str]) -> dict[str, bytes]:
    """The raw bytes of the named batch files, from the tarball or an extracted folder."""
    found: dict[str, bytes] = {}
    if path.is_dir():
        for member in members:
            file = path / member
            if not file.is_file():
                raise DataError(f"{path}: batch file {member} is missing")
            if file.stat().st_size > _MAX_CIFAR_MEMBER_BYTES:
                raise DataError(f"{file}: {file.stat().st_size} bytes, too large for a batch")
            found[member] = file.read_bytes()
        return found
    wanted = {f"{_CIFAR_FOLDER}/{member}": member for member in members}
    try:
        with gzip.open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            for info in tar:
                member = wanted.get(info.name.removeprefix("./"))
                if member is None:
                    continue
                if not info.isfile():
                    raise DataError(f"{path}: archive member {info.name} is not a regular file")
                if info.size > _MAX_CIFAR_MEMBER_BYTES:
                    raise DataError(
                        f"{path}: archive member {info.name} has {info.size} bytes, too large "
                        "for a CIFAR-10 batch"
                    )
                handle = tar.extractfile(info)
                assert handle is not None  # regular files always have one
                blob = handle.read()
                if len(blob) != info.size:
                    raise DataError(f"{path}: archive member {info.name} is truncated")
                found[member] = blob
            # Read on to the end of the gzip stream: this checks its CRC and length, so a
            # truncated download is caught even when the members needed come before the cut.
            while stream.read(_CHUNK):
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: not a readable .tar.gz archive ({exc}); the file is truncated or "
            "corrupt: delete it and download it again"
        ) from None
    missing = [f"{_CIFAR_FOLDER}/{m}" for m in members if m not in found]
    if missing:
        raise DataError(
            f"{path}: archive lacks {', '.join(missing)}; not the CIFAR-10 python tarball "
            "or truncated"
        )
    return found


def _load_cifar(
    spec: DatasetSpec, split: str, paths: Mapping[str, Path], verify: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    (remote,) = spec.files[split]
    path = paths[remote.name]
    if verify:
        if path.is_dir():
            warnings.warn(
                f"cannot verify the extracted folder {path}: only the MD5 of {remote.name} "
                "is known",
                stacklevel=3,
            )
        else:
            _check_md5(path, _md5_file(path), remote.md5, "published file")
    members = _CIFAR_MEMBERS[split]
    blobs = _cifar_member_bytes(path, members)
    images, labels = [], []
    for member in members:
        data, lab = _parse_cifar_batch(blobs.pop(member), f"{path} ({member})", spec.num_classes)
        images.append(data)
        labels.append(lab)
    pixels = np.concatenate(images).reshape(-1, *spec.input_shape)
    return _to_float(pixels), torch.from_numpy(np.concatenate(labels))


def _load_digits(
    spec: DatasetSpec, split: str, paths: Mapping[str, Path], verify: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    target = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(target)), test_size=0.25, stratify=target, random_state=0
    )
    index = train_idx if split == "train" else test_idx
    images = np.asarray(bunch.images, dtype=np.float32)[index, None] / np.float32(16.0)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(target[index])


#: Registry of data sets: name -> :class:`DatasetSpec`.
DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        name="digits",
        description="scikit-learn 8x8 handwritten digits (UCI), embedded; 1347 train / 450 test",
        input_shape=(1, 8, 8),
        num_classes=10,
        files={"train": (), "test": ()},
        mirrors=(),
        loader=_load_digits,
    ),
    "mnist": DatasetSpec(
        name="mnist",
        description="MNIST handwritten digits (LeCun et al. 1998), 60000 train / 10000 test",
        input_shape=(1, 28, 28),
        num_classes=10,
        files=_idx_split_files(_MNIST),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        loader=_load_idx,
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        description="Fashion-MNIST (Xiao et al. 2017), 60000 train / 10000 test",
        input_shape=(1, 28, 28),
        num_classes=10,
        files=_idx_split_files(_FASHION),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        loader=_load_idx,
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        description="CIFAR-10 (Krizhevsky 2009), python version, 50000 train / 10000 test",
        input_shape=(3, 32, 32),
        num_classes=10,
        files={"train": (_CIFAR10,), "test": (_CIFAR10,)},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        loader=_load_cifar,
    ),
}


# --------------------------------------------------------------------------------------
# Finding and downloading files
# --------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The download cache: ``$XDG_CACHE_HOME`` (or ``~/.cache``), then ``gametheory-defense``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "gametheory-defense"


def search_dirs(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched for data set ``name``, in order.

    ``data_dir``, then ``$GTD_DATA_DIR``, then :func:`default_cache_dir`; each root is
    searched directly and in its ``<name>/`` subfolder.
    """
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        roots.append(Path(env).expanduser())
    roots.append(default_cache_dir())
    dirs: list[Path] = []
    for root in roots:
        for directory in (root, root / name):
            if directory not in dirs:
                dirs.append(directory)
    return dirs


def _find_in(directory: Path, files: Sequence[RemoteFile]) -> dict[str, Path]:
    """The files present in ``directory`` (published name -> local path)."""
    found: dict[str, Path] = {}
    for remote in files:
        for local in remote.local_names:
            candidate = directory / local
            if candidate.exists():
                found[remote.name] = candidate
                break
    return found


def _same_named_elsewhere(spec: DatasetSpec, found: Mapping[str, Path]) -> tuple[str, Path] | None:
    """``(other data set, file)`` if a file found for ``spec`` is another data set's published file.

    MNIST and Fashion-MNIST publish files of the same names, so a folder of one is a
    complete-looking folder of the other. Only files whose name another registered data set
    also publishes are hashed (against that data set's published and decompressed MD5s).
    """
    for published, path in found.items():
        others = [
            (other.name, remote)
            for other in DATASETS.values()
            if other.name != spec.name
            for remotes in other.files.values()
            for remote in remotes
            if remote.name == published
        ]
        if not others or not path.is_file():
            continue
        try:
            raw = path.read_bytes()
        except OSError:
            continue  # the loader reports unreadable files
        digests = {_md5(raw)}
        if raw[:2] == b"\x1f\x8b" and any(remote.raw_md5 for _, remote in others):
            try:
                digests.add(_md5(gzip.decompress(raw)))
            except (OSError, EOFError, zlib.error):
                pass  # the loader reports bad gzip data
        for other_name, remote in others:
            if digests & {remote.md5, remote.raw_md5}:
                return other_name, path
    return None


def _fetch(url: str, out: BinaryIO, *, timeout: float, progress: bool, desc: str) -> str:
    """Stream ``url`` into ``out``; return the MD5 of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": "gametheory-defense"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        headers = getattr(response, "headers", None)
        length = headers.get("Content-Length") if headers is not None else None
        total = int(length) if length and str(length).isdigit() else None
        with tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
            disable=not progress, leave=False,
        ) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike[str],
    *,
    md5: str,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download a file, trying mirrors in order, and keep it only if its MD5 matches.

    The bytes are streamed to a temporary file next to ``dest`` and renamed onto
    ``dest`` only after the checksum matched, so ``dest`` is never partial, even when
    two processes download at once.

    Parameters
    ----------
    urls : sequence of str
        Full URLs of the same file, tried in order until one gives the right bytes.
    dest : path
        Where the file lands; its folder is created.
    md5 : str
        Expected MD5 (hex) of the file.
    progress : bool, optional
        Show a tqdm progress bar.
    timeout : float, optional
        Socket timeout in seconds.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    DataError
        No mirror gave the file with the expected checksum (the message lists why each
        failed); nothing is left behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                logger.info("downloading %s", url)
                actual = _fetch(url, out, timeout=timeout, progress=progress, desc=dest.name)
            if actual != md5:
                failures.append(f"{url} gave MD5 {actual}, expected {md5}")
                continue
            os.replace(tmp, dest)
            logger.info("saved %s", dest)
            return dest
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {dest.name}: {'; '.join(failures) or 'no URLs given'}")


def _missing_message(spec: DatasetSpec, split: str, dirs: Sequence[Path]) -> str:
    files = spec.files[split]
    expected = " and ".join(f.name for f in files)
    alternatives = sorted({a for f in files for a in f.alternatives})
    also = f" (or {', '.join(alternatives)})" if alternatives else ""
    partial = ""
    for directory in dirs:
        found = _find_in(directory, files)
        if found:
            partial = f"; {directory} has only {', '.join(sorted(found))}"
            break
    searched = ", ".join(str(d) for d in dirs)
    return (
        f"{spec.name} {split} data not found: expected {expected}{also} in one of {searched}"
        f"{partial}; fix: pass data_dir=DIR (CLI --data-dir DIR), set {DATA_DIR_ENV}=DIR, or "
        f"use download=True (CLI --download) to fetch it into {default_cache_dir() / spec.name}"
    )


def _locate(
    spec: DatasetSpec,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    *,
    download: bool,
    progress: bool,
) -> dict[str, Path]:
    files = spec.files[split]
    dirs = search_dirs(spec.name, data_dir)
    foreign: tuple[str, Path] | None = None
    for directory in dirs:
        found = _find_in(directory, files)
        if len(found) == len(files):
            clash = None if directory.name == spec.name else _same_named_elsewhere(spec, found)
            if clash is None:
                return found
            logger.warning("skipping %s: it is the %s file, not %s's", clash[1], clash[0], spec.name)
            foreign = foreign or clash
    if not download:
        if foreign is not None:
            other, path = foreign
            raise DataError(
                f"{path} is the published {other} file of that name, not {spec.name}'s; put the "
                f"{spec.name} files in {path.parent / spec.name} (or pass data_dir=DIR holding them), "
                "or use download=True (CLI --download)"
            )
        raise DataError(_missing_message(spec, split, dirs))
    target = default_cache_dir() / spec.name
    for remote in files:
        if remote.name not in _find_in(target, [remote]):
            download_file(
                [mirror + remote.name for mirror in spec.mirrors],
                target / remote.name,
                md5=remote.md5,
                progress=progress,
            )
    return _find_in(target, files)


def load_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    verify: bool = False,
    progress: bool = True,
) -> ArrayDataset:
    """Load a registered data set split into memory as images in [0, 1].

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`: ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or
        ``"cifar10"``.
    split : {"train", "test"}
        Which split.
    data_dir : path, optional
        Directory searched first (directly and in ``<name>/``), before ``$GTD_DATA_DIR``
        and the user cache.
    download : bool, optional
        Fetch missing files from the canonical mirrors into the user cache, checking the
        published MD5s.
    verify : bool, optional
        Check the MD5 of the files found (for MNIST, of the decompressed content). A plain
        load checks only headers, lengths and label ranges, which is cheap.
    progress : bool, optional
        Progress bars for downloads.

    Returns
    -------
    ArrayDataset
        Images ``(N, C, H, W)`` float32 in [0, 1] and int64 labels.

    Raises
    ------
    ValueError
        Unknown name (the message lists the choices) or split.
    DataError
        Files missing (the message lists the files expected, the directories searched and
        how to fix it), truncated, corrupt or failing verification (naming the file), or
        a download failed.
    """
    spec = DATASETS.get(name.lower().replace("_", "-")) if isinstance(name, str) else None
    if spec is None:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir() and spec.files[split]:
        warnings.warn(f"data_dir {data_dir} is not a directory", stacklevel=2)
    paths = _locate(spec, split, data_dir, download=download, progress=progress) \
        if spec.files[split] else {}
    images, labels = spec.loader(spec, split, paths, verify)
    dataset = ArrayDataset(
        images, labels, num_classes=spec.num_classes, name=spec.name, split=split
    )
    where = ", ".join(str(p) for p in dict.fromkeys(p.parent for p in paths.values()))
    logger.info("loaded %s %s: %d images%s", spec.name, split, len(dataset),
                f" from {where}" if where else "")
    return dataset
