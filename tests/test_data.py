"""Tests of gametheory_defense.data: parsing, lookup, corruption, safety, download."""

from __future__ import annotations

import copyreg
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from gametheory_defense.data import (
    DATA_DIR_ENV,
    DATASETS,
    ArrayDataset,
    RemoteFile,
    RestrictedUnpickler,
    as_tensors,
    download_file,
    load_dataset,
    search_dirs,
)
from gametheory_defense.errors import DataError

REAL_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the user's cache or GTD_DATA_DIR."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# --------------------------------------------------------------------------------------
# Writers of small files in the real formats (independent of the code under test)
# --------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian uint32 sizes, data."""
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_file(path: Path, payload: bytes, *, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload, mtime=0))
    else:
        path.write_bytes(payload)
    return path


def write_mnist(
    directory: Path, *, n_train: int = 12, n_test: int = 6, gz: bool = True, seed: int = 0,
    size: int = 28,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n, (img_name, lbl_name) in (
        ("train", n_train, TRAIN_FILES), ("test", n_test, TEST_FILES)
    ):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range
        labels = np.arange(n, dtype=np.uint8) % 10
        write_file(directory / img_name, idx_bytes(images), gz=gz)
        write_file(directory / lbl_name, idx_bytes(labels), gz=gz)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR-10 batch byte for byte as Python 2's cPickle (protocol 2) wrote them.

    Strings are py2 ``str`` (SHORT_BINSTRING/BINSTRING), arrays go through
    ``numpy.core.multiarray._reconstruct`` with a ``(1, shape, dtype, False, raw)`` state.
    """

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    out = b"\x80\x02}(" + s(b"batch_label") + s(b"training batch 1 of 5")
    out += s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    out += i(0) + b"\x85" + s(b"b") + b"\x87R"
    out += b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
    out += b"(" + i(3) + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + i(0) + b"tb"
    out += b"\x89" + s(data.tobytes()) + b"tb"
    out += s(b"labels") + b"](" + b"".join(i(v) for v in labels) + b"e"
    out += s(b"filenames") + b"](" + b"".join(s(f"img{k}.png".encode()) for k in labels) + b"e"
    return out + b"u."


Batches = dict[str, tuple[bytes, np.ndarray, list[int]]]


def cifar_batches(seed: int = 0, n: int = 3, *, py2: bool = True) -> Batches:
    rng = np.random.default_rng(seed)
    batches = {}
    for k, member in enumerate([*(f"data_batch_{j}" for j in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        if py2 or k % 2:
            blob = py2_cifar_pickle(data, labels)
        else:  # what numpy 2 / Python 3 write with protocol 3
            blob = pickle.dumps({b"data": data, b"labels": labels}, protocol=3)
        batches[member] = (blob, data, labels)
    return batches


def write_tar(
    path: Path, members: dict[str, bytes], *, folder: str = "cifar-10-batches-py"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


# --------------------------------------------------------------------------------------
# Registry, digits
# --------------------------------------------------------------------------------------


def test_registry_and_bad_arguments() -> None:
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "cifar10"}
    assert DATASETS["mnist"].mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert any("yann.lecun.com" in m for m in DATASETS["mnist"].mirrors)
    with pytest.raises(DataError, match="unknown data set 'svhn'.*digits.*mnist.*cifar10"):
        load_dataset("svhn", "train")
    with pytest.raises(ValueError, match="split must be one of train, test"):
        load_dataset("digits", "validation")


def test_digits_split_shapes_range_and_stratification() -> None:
    from sklearn.datasets import load_digits

    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert (len(train), len(test)) == (1347, 450)
    assert train.images.shape == (1347, 1, 8, 8) and train.input_shape == (1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert (train.num_classes, train.name, train.split) == (10, "digits", "train")
    for ds in (train, test):
        assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
        assert torch.equal(ds.images * 16, (ds.images * 16).round())  # values k/16
    total = np.bincount(load_digits().target, minlength=10)
    n_train = np.bincount(train.labels.numpy(), minlength=10)
    n_test = np.bincount(test.labels.numpy(), minlength=10)
    assert np.array_equal(n_train + n_test, total)
    # stratified: each class's test share is 1/4 of the class to within one example
    assert np.all(np.abs(n_test - total * 450 / 1797) <= 1)
    # the two splits partition the 1797 images (no image in both, none lost)
    full = np.asarray(load_digits().images, dtype=np.float32) / 16
    joined = torch.cat([train.images, test.images]).reshape(1797, 64).numpy()
    assert np.array_equal(np.unique(joined, axis=0), np.unique(full.reshape(1797, 64), axis=0))


def test_digits_is_deterministic() -> None:
    a, b = load_dataset("digits", "test"), load_dataset("digits", "test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


# --------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_parse(tmp_path: Path, gz: bool, name: str) -> None:
    arrays = write_mnist(tmp_path, gz=gz)
    for split in ("train", "test"):
        ds = load_dataset(name, split, data_dir=tmp_path)
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        assert ds.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images.astype(np.float32) / 255))
        assert ds.labels.tolist() == labels.tolist()
        assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
        assert (ds.name, ds.split, ds.num_classes) == (name, split, 10)


def test_subfolder_and_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    a = write_mnist(explicit / "mnist", seed=1)
    b = write_mnist(env / "mnist", seed=2, n_test=4)
    monkeypatch.setenv(DATA_DIR_ENV, str(env))
    # $GTD_DATA_DIR is used when no data_dir is given ...
    ds = load_dataset("mnist", "test")
    assert len(ds) == 4
    assert torch.equal(ds.images[:, 0] * 255, torch.from_numpy(b["test_images"]).float())
    # ... and data_dir comes first
    ds = load_dataset("mnist", "test", data_dir=explicit)
    assert len(ds) == 6
    assert torch.equal(ds.images[:, 0] * 255, torch.from_numpy(a["test_images"]).float())
    # the user cache ($XDG_CACHE_HOME/gametheory-defense/<name>) comes last
    monkeypatch.delenv(DATA_DIR_ENV)
    write_mnist(tmp_path / "xdg-cache" / "gametheory-defense" / "mnist", n_test=3)
    assert len(load_dataset("mnist", "test")) == 3
    assert search_dirs("mnist", explicit) == [
        explicit, explicit / "mnist",
        tmp_path / "xdg-cache" / "gametheory-defense",
        tmp_path / "xdg-cache" / "gametheory-defense" / "mnist",
    ]


def _as_published_mnist(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Register the files in ``directory`` as MNIST's published ones (their decompressed MD5s)."""
    spec = DATASETS["mnist"]
    files = {
        split: tuple(
            dataclasses.replace(
                f, raw_md5=hashlib.md5(gzip.decompress((directory / f.name).read_bytes())).hexdigest()
            )
            for f in remotes
        )
        for split, remotes in spec.files.items()
    }
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(spec, files=files))


def test_mnist_files_are_not_taken_for_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # MNIST and Fashion-MNIST publish files of the same names: a flat folder of MNIST files
    # must not be loaded as Fashion-MNIST (nor hide a fashion-mnist/ subfolder after it)
    flat = tmp_path / "flat"
    mnist = write_mnist(flat, seed=1)
    _as_published_mnist(monkeypatch, flat)
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", "test", data_dir=flat)
    message = str(info.value)
    assert "\n" not in message
    assert "t10k-images-idx3-ubyte.gz" in message and "mnist file" in message
    assert str(flat / "fashion-mnist") in message
    fashion = write_mnist(flat / "fashion-mnist", seed=2, n_test=4)
    ds = load_dataset("fashion-mnist", "test", data_dir=flat)
    assert torch.equal(ds.images[:, 0] * 255, torch.from_numpy(fashion["test_images"]).float())
    ds = load_dataset("mnist", "test", data_dir=flat)  # MNIST itself still loads from there
    assert torch.equal(ds.images[:, 0] * 255, torch.from_numpy(mnist["test_images"]).float())


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_real_mnist_is_not_fashion_mnist() -> None:
    with pytest.raises(DataError, match="is the published mnist file"):
        load_dataset("fashion-mnist", "test", data_dir=REAL_MNIST)


def test_published_checksums_and_mirrors() -> None:
    """The MD5s and URLs are the ones the data sets' authors publish (as torchvision uses)."""
    md5 = {s: {f.name: f.md5 for fs in DATASETS[s].files.values() for f in fs} for s in DATASETS}
    assert md5["mnist"] == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    assert md5["fashion-mnist"] == {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    assert md5["cifar10"] == {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
    assert DATASETS["mnist"].mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert DATASETS["fashion-mnist"].mirrors == ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    assert DATASETS["cifar10"].mirrors == ("https://www.cs.toronto.edu/~kriz/",)
    assert all(m.endswith("/") for spec in DATASETS.values() for m in spec.mirrors)


def test_missing_files_error_lists_files_dirs_and_fixes(tmp_path: Path) -> None:
    write_file(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((2, 28, 28))), gz=True)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for needle in (
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", str(tmp_path),
        str(tmp_path / "mnist"), str(tmp_path / "xdg-cache" / "gametheory-defense"),
        "--data-dir", DATA_DIR_ENV, "download=True", f"{tmp_path} has only t10k-images",
    ):
        assert needle in message


def test_nonexistent_data_dir_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="is not a directory"), pytest.raises(DataError):
        load_dataset("mnist", "test", data_dir=tmp_path / "typo")


def _gz_truncated(d: Path) -> str:
    path = write_file(d / TEST_FILES[0], idx_bytes(np.zeros((6, 28, 28))), gz=True)
    path.write_bytes(path.read_bytes()[:40])
    return path.name


def _not_gzip(d: Path) -> str:
    (d / f"{TEST_FILES[0]}.gz").write_bytes(idx_bytes(np.zeros((6, 28, 28))))
    return f"{TEST_FILES[0]}.gz"


def _wrong_magic(d: Path) -> str:
    write_file(d / TEST_FILES[0], idx_bytes(np.zeros(6)), gz=True)  # a labels file
    return f"{TEST_FILES[0]}.gz"


def _short_data(d: Path) -> str:
    (d / f"{TEST_FILES[0]}.gz").unlink()
    write_file(d / TEST_FILES[0], idx_bytes(np.zeros((6, 28, 28)))[:-1], gz=False)
    return TEST_FILES[0]


def _empty(d: Path) -> str:
    (d / f"{TEST_FILES[1]}.gz").unlink()
    write_file(d / TEST_FILES[1], b"", gz=False)
    return TEST_FILES[1]


def _label_count(d: Path) -> str:
    write_file(d / TEST_FILES[1], idx_bytes(np.zeros(5)), gz=True)
    return f"{TEST_FILES[1]}.gz"


def _label_range(d: Path) -> str:
    write_file(d / TEST_FILES[1], idx_bytes(np.array([0, 1, 2, 10, 3, 4])), gz=True)
    return f"{TEST_FILES[1]}.gz"


def _wrong_size(d: Path) -> str:
    write_file(d / TEST_FILES[0], idx_bytes(np.zeros((6, 8, 8))), gz=True)
    return f"{TEST_FILES[0]}.gz"


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_gz_truncated, "bad gzip data"),
        (_not_gzip, "not a gzip file"),
        (_wrong_magic, "wrong IDX magic number 0x00000801, expected 0x00000803"),
        (_short_data, r"header says shape \(6, 28, 28\) \(4720 bytes\) but the data has 4719"),
        (_empty, "too short for an IDX file"),
        (_label_count, "5 labels but t10k-images-idx3-ubyte.gz has 6 images"),
        (_label_range, "label value 10 out of range 0..9"),
        (_wrong_size, "images are 8x8, expected 28x28"),
    ],
)
def test_corrupt_idx_raises_naming_the_file(
    tmp_path: Path, corrupt: Callable[[Path], str], match: str
) -> None:
    write_mnist(tmp_path)
    bad = corrupt(tmp_path)
    with pytest.raises(DataError, match=match) as info:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert str(tmp_path / bad) in str(info.value)


def test_verify_checks_checksums(tmp_path: Path) -> None:
    write_mnist(tmp_path / "gz")
    load_dataset("mnist", "test", data_dir=tmp_path / "gz")  # a plain load does not hash
    with pytest.raises(DataError, match="MD5 of the decompressed content is [0-9a-f]{32}, "
                       "expected 2646ac647ad5339dbf082846283269ea"):
        load_dataset("mnist", "test", data_dir=tmp_path / "gz", verify=True)
    with pytest.raises(DataError, match="MD5 of the published file .* expected bef4ecab"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path / "gz", verify=True)
    write_mnist(tmp_path / "raw", gz=False)
    with pytest.warns(UserWarning, match="cannot verify"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path / "raw", verify=True)


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_real_mnist() -> None:
    train = load_dataset("mnist", "train", data_dir=REAL_MNIST, verify=True)
    test = load_dataset("mnist", "test", data_dir=REAL_MNIST.parent, verify=True)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]
    for ds in (train, test):
        assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
    # decompressed MD5s: the README's values are the ones verify=True checked
    for name, md5 in [
        ("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb"),
        ("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637"),
    ]:
        raw = gzip.decompress((REAL_MNIST / name).read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5


# --------------------------------------------------------------------------------------
# CIFAR-10 and the restricted unpickler
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("py2", [True, False])
def test_cifar_tarball_parses(tmp_path: Path, py2: bool) -> None:
    batches = cifar_batches(py2=py2)
    members = {k: v[0] for k, v in batches.items()}
    write_tar(tmp_path / "cifar10" / "cifar-10-python.tar.gz", members)
    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    expected_labels = [v for j in range(1, 6) for v in batches[f"data_batch_{j}"][2]]
    assert train.labels.tolist() == expected_labels
    data = batches["test_batch"][1]
    # row layout: 1024 red values, then green, then blue, each 32 rows of 32
    for n, c, h, w in [(0, 0, 0, 0), (1, 1, 5, 7), (2, 2, 31, 31), (0, 2, 10, 0)]:
        assert float(test.images[n, c, h, w]) == pytest.approx(data[n, c * 1024 + h * 32 + w] / 255)
    assert float(train.images[3, 0, 0, 1]) == pytest.approx(batches["data_batch_2"][1][0, 1] / 255)


def test_cifar_extracted_folder(tmp_path: Path) -> None:
    batches = cifar_batches(seed=3)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, (blob, _, _) in batches.items():
        (folder / name).write_bytes(blob)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert test.labels.tolist() == batches["test_batch"][2]
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4 is missing"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _good(members: dict[str, bytes]) -> None:
    pass


def _drop_member(members: dict[str, bytes]) -> None:
    del members["data_batch_3"]


def _bad_width(members: dict[str, bytes]) -> None:
    members["data_batch_2"] = py2_cifar_pickle(np.zeros((3, 3000), np.uint8), [1, 2, 3])


def _bad_label_count(members: dict[str, bytes]) -> None:
    members["data_batch_2"] = py2_cifar_pickle(np.zeros((3, 3072), np.uint8), [1, 2])


def _bad_label_value(members: dict[str, bytes]) -> None:
    members["data_batch_2"] = py2_cifar_pickle(np.zeros((3, 3072), np.uint8), [1, 12, 2])


def _not_a_dict(members: dict[str, bytes]) -> None:
    members["data_batch_2"] = pickle.dumps([1, 2, 3], protocol=2)


def _float_data(members: dict[str, bytes]) -> None:
    members["data_batch_2"] = pickle.dumps(
        {b"data": np.zeros((3, 3072)), b"labels": [1, 2, 3]}, protocol=3
    )


def _truncated_pickle(members: dict[str, bytes]) -> None:
    members["data_batch_2"] = members["data_batch_2"][:500]


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_drop_member, "archive lacks cifar-10-batches-py/data_batch_3"),
        (_bad_width, r"data_batch_2\).*must be a uint8 array N x 3072"),
        (_bad_label_count, r"data_batch_2\): 2 labels but 3 images"),
        (_bad_label_value, r"data_batch_2\): label values must lie in 0..9, got 1..12"),
        (_not_a_dict, r"data_batch_2\): not a CIFAR-10 batch \(a list"),
        (_float_data, r"data_batch_2\).*uint8 array .* float64"),
        (_truncated_pickle, r"data_batch_2\): not a valid CIFAR-10 batch"),
    ],
)
def test_corrupt_cifar_raises_naming_the_file(
    tmp_path: Path, corrupt: Callable[[dict[str, bytes]], None], match: str
) -> None:
    members = {k: v[0] for k, v in cifar_batches().items()}
    corrupt(members)
    path = write_tar(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(DataError, match=match) as info:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_or_garbage_tarball(tmp_path: Path, keep: float) -> None:
    members = {k: v[0] for k, v in cifar_batches(n=20).items()}
    path = write_tar(tmp_path / "cifar-10-python.tar.gz", members)
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    assert str(path) in str(info.value)
    path.write_bytes(b"this is not a tarball at all" * 10)
    with pytest.raises(DataError, match="not a readable .tar.gz archive"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_malicious_pickle_in_tarball_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    members = {k: v[0] for k, v in cifar_batches().items()}
    members["test_batch"] = pickle.dumps({b"data": _Evil(marker), b"labels": [1]}, protocol=3)
    path = write_tar(tmp_path / "cifar-10-python.tar.gz", members)
    match = r"test_batch\): refusing to unpickle global posix.system"
    with pytest.raises(DataError, match=match) as info:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_restricted_unpickler_refuses_globals(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    for payload in (_Evil(marker), eval, np.load, print):
        blob = pickle.dumps(payload, protocol=protocol)
        with pytest.raises(DataError, match="refusing to unpickle global"):
            RestrictedUnpickler(io.BytesIO(blob)).load()
    # a dotted attribute path through an allowed module is not an allowed name either
    blob = b"\x80\x04\x8c\x05numpy\x8c\x0endarray.tofile\x93."
    with pytest.raises(DataError, match="global numpy.ndarray.tofile"):
        RestrictedUnpickler(io.BytesIO(blob)).load()
    assert not marker.exists()


def test_restricted_unpickler_refuses_extension_codes(tmp_path: Path) -> None:
    # copyreg extension codes are resolved through a process-wide cache that can bypass
    # find_class; the opcode scan refuses them before anything runs
    marker = tmp_path / "pwned"
    copyreg.add_extension("posix", "system", 4242)
    try:
        blob = pickle.dumps(_Evil(marker), protocol=2)
        assert blob[2:3] == b"\x83"  # EXT2
        with pytest.raises(DataError, match="refusing pickle opcode EXT2"):
            RestrictedUnpickler(io.BytesIO(blob)).load()
    finally:
        copyreg.remove_extension("posix", "system", 4242)
    assert not marker.exists()
    blob = b"\x80\x02P0\n."  # PERSID
    with pytest.raises(DataError, match="refusing pickle opcode PERSID"):
        RestrictedUnpickler(io.BytesIO(blob)).load()


def test_restricted_unpickler_rebuilds_arrays() -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (3, 4):
        out = RestrictedUnpickler(io.BytesIO(pickle.dumps({b"a": arr}, protocol=protocol))).load()
        assert np.array_equal(out[b"a"], arr) and out[b"a"].dtype == np.uint8
    blob = py2_cifar_pickle(np.ones((2, 3072), np.uint8), [3, 4])
    out = RestrictedUnpickler(io.BytesIO(blob)).load()
    assert out[b"labels"] == [3, 4] and out[b"data"].shape == (2, 3072)
    assert out[b"filenames"] == [b"img3.png", b"img4.png"]
    # Python 3 writes bytes under protocol 2 as calls to _codecs.encode: refused, not needed
    with pytest.raises(DataError, match="_codecs.encode"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps({b"a": arr}, protocol=2))).load()


def test_cifar_verify_detects_checksum(tmp_path: Path) -> None:
    write_tar(tmp_path / "cifar-10-python.tar.gz", {k: v[0] for k, v in cifar_batches().items()})
    with pytest.raises(DataError, match="expected c58f30108f718f92721af3b95e74349a"):
        load_dataset("cifar10", "test", data_dir=tmp_path, verify=True)


# --------------------------------------------------------------------------------------
# Download (no network: urllib.request.urlopen is replaced)
# --------------------------------------------------------------------------------------


class _Response(io.BytesIO):
    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def _serve(monkeypatch: pytest.MonkeyPatch, served: dict[str, bytes]) -> list[str]:
    calls: list[str] = []

    def fake_urlopen(
        request: urllib.request.Request | str, timeout: float | None = None
    ) -> _Response:
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        calls.append(url)
        if url not in served:
            raise urllib.error.URLError("connection refused")
        return _Response(served[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


def test_download_file_checks_md5_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = bytes(range(256)) * 4000
    good_md5 = hashlib.md5(payload).hexdigest()
    served = {"https://b.example/f.gz": payload, "https://bad.example/f.gz": b"x" + payload[1:]}
    calls = _serve(monkeypatch, served)
    dest = tmp_path / "out" / "f.gz"
    match = f"bad.example/f.gz gave MD5 [0-9a-f]{{32}}, expected {good_md5}"
    with pytest.raises(DataError, match=match):
        download_file(["https://bad.example/f.gz"], dest, md5=good_md5, progress=False)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file left
    # a dead mirror, then a good one
    path = download_file(
        ["https://a.example/f.gz", "https://b.example/f.gz"], dest, md5=good_md5, progress=False
    )
    assert path == dest and dest.read_bytes() == payload
    assert calls[-2:] == ["https://a.example/f.gz", "https://b.example/f.gz"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.gz"]


def test_load_dataset_downloads_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    arrays = write_mnist(source)
    spec = DATASETS["mnist"]
    files = {
        split: tuple(
            dataclasses.replace(f, md5=hashlib.md5((source / f.name).read_bytes()).hexdigest())
            for f in spec.files[split]
        )
        for split in ("train", "test")
    }
    mirrors = ("https://a.example/", "https://b.example/")
    fake = dataclasses.replace(spec, files=files, mirrors=mirrors)
    monkeypatch.setitem(DATASETS, "mnist", fake)
    served = {f"https://b.example/{p.name}": p.read_bytes() for p in source.iterdir()}
    calls = _serve(monkeypatch, served)
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", "test")
    ds = load_dataset("mnist", "test", download=True, progress=False)
    assert ds.labels.tolist() == arrays["test_labels"].tolist()
    cache = tmp_path / "xdg-cache" / "gametheory-defense" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == [f"{n}.gz" for n in TEST_FILES]
    assert calls == [f"https://{h}.example/{n}.gz" for n in TEST_FILES for h in ("a", "b")]
    # the next load finds the cached files without the network
    assert len(load_dataset("mnist", "test", download=True)) == 6 and len(calls) == 4


def test_remote_file_names() -> None:
    f = DATASETS["mnist"].files["test"][0]
    assert isinstance(f, RemoteFile)
    assert f.local_names == ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte")
    cifar = DATASETS["cifar10"].files["train"][0]
    assert cifar.local_names == ("cifar-10-python.tar.gz", "cifar-10-batches-py")


# --------------------------------------------------------------------------------------
# ArrayDataset and as_tensors
# --------------------------------------------------------------------------------------


def _small(n: int = 5) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 4, 4, generator=g)
    return ArrayDataset(images, torch.arange(n) % 3, num_classes=3, name="toy", split="test")


def test_array_dataset_items_subset_and_to() -> None:
    ds = _small()
    x, y = ds[2]
    assert x.shape == (1, 4, 4) and int(y) == 2 and y.dtype == torch.int64
    first = ds.subset(3)
    assert len(first) == 3 and torch.equal(first.images, ds.images[:3])
    assert (first.name, first.split, first.num_classes) == ("toy", "test", 3)
    assert first.input_shape == (1, 4, 4)
    picked = ds.subset([4, 0])
    assert picked.labels.tolist() == [1, 0] and torch.equal(picked.images[0], ds.images[4])
    assert torch.equal(ds.subset(np.array([1])).images, ds.images[1:2])
    with pytest.warns(UserWarning, match="only 5"):
        assert len(ds.subset(9)) == 5
    with pytest.raises(ValueError, match=r"in \[0, 5\)"):
        ds.subset([0, 5])
    with pytest.raises(ValueError, match="integer indices"):
        ds.subset([0.5])
    moved = ds.to("cpu")
    assert moved is not ds and torch.equal(moved.images, ds.images)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    xb, yb = next(iter(loader))
    assert xb.shape == (2, 1, 4, 4) and yb.tolist() == [0, 1]


def test_array_dataset_validation() -> None:
    with pytest.raises(ValueError, match="out of range for num_classes=2"):
        ArrayDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 2]), num_classes=2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ArrayDataset(torch.full((2, 1, 2, 2), 2.0), torch.tensor([0, 1]))
    assert ArrayDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 4])).num_classes == 5


def test_as_tensors_accepts_the_three_forms() -> None:
    ds = _small()
    x, y = as_tensors(ds)
    assert x is ds.images and y is ds.labels
    x64 = np.random.default_rng(0).random((4, 1, 3, 3))
    x2, y2 = as_tensors((x64, np.array([0, 1, 2, 3], dtype=np.int32)))
    assert x2.dtype == torch.float32 and y2.dtype == torch.int64 and y2.tolist() == [0, 1, 2, 3]
    assert torch.allclose(x2, torch.from_numpy(x64).float())
    x3, y3 = as_tensors(TensorDataset(ds.images, ds.labels))
    assert torch.equal(x3, ds.images) and torch.equal(y3, ds.labels)
    x4, y4 = as_tensors([(ds.images[i], int(ds.labels[i])) for i in range(len(ds))])
    assert torch.equal(x4, ds.images) and torch.equal(y4, ds.labels)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ((torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2).long()), "divide uint8"),
        ((torch.zeros(2, 2, 2), torch.zeros(2, dtype=torch.long)), "add a channel axis"),
        ((torch.full((2, 1, 2, 2), 1.5), torch.zeros(2, dtype=torch.long)), r"\[0, 1\].*1\.5"),
        ((torch.full((2, 1, 2, 2), -0.1), torch.zeros(2, dtype=torch.long)), r"\[0, 1\]"),
        ((torch.full((2, 1, 2, 2), float("nan")), torch.zeros(2, dtype=torch.long)), r"\[0, 1\]"),
        ((torch.zeros(2, 1, 2, 2), torch.zeros(3, dtype=torch.long)), "2 images but 3 labels"),
        ((torch.zeros(2, 1, 2, 2), torch.zeros(2)), "integer"),
        ((torch.zeros(2, 1, 2, 2), torch.tensor([0, -1])), ">= 0"),
        ((torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long)), "empty"),
        ((torch.zeros(2, 1, 2, 2),), "length 1"),
        (42, "got int"),
    ],
)
def test_as_tensors_rejects_bad_data(data: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        as_tensors(data)
