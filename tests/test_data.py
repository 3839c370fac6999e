"""Data loaders on tiny real-format files written to tmp dirs, and the bundled digits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from slimbench.data import (
    CIFAR_STATS,
    DATASET_SPECS,
    CifarPickleDataset,
    cifar_loaders,
    digits_loaders,
    digits_tensors,
    get_loaders,
    imagefolder_loaders,
    parse_data_option,
)


def _write_batch(path, n, label_key, seed, classes=10):
    rng = np.random.default_rng(seed)
    entry = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             label_key: rng.integers(0, classes, size=n).tolist(), b"batch_label": b"x"}
    with open(path, "wb") as f:
        pickle.dump(entry, f)
    return entry


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    entries = [_write_batch(folder / f"data_batch_{i}", 3, b"labels", i) for i in range(1, 6)]
    test = _write_batch(folder / "test_batch", 4, b"labels", 99)
    return tmp_path, entries, test


def test_cifar10_pickles_load_in_order_with_pixels_and_labels(cifar10_root):
    root, entries, test = cifar10_root
    train_loader, test_loader = cifar_loaders(root, "cifar10", batch_size=4, augment=False)
    assert len(train_loader.dataset) == 15 and len(test_loader.dataset) == 4
    ds = CifarPickleDataset(root, "cifar10", train=True)
    image, label = ds[4]  # second image of data_batch_2
    expected = torch.from_numpy(entries[1][b"data"][1].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(image, expected) and label == entries[1][b"labels"][1]
    x, y = next(iter(test_loader))
    mean, std = CIFAR_STATS["cifar10"]
    raw = torch.from_numpy(test[b"data"].reshape(-1, 3, 32, 32)).float() / 255
    norm = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, norm, atol=1e-6) and y.tolist() == test[b"labels"]


def test_cifar_augmentation_keeps_shape_and_is_seeded(cifar10_root):
    root, _, _ = cifar10_root
    a, _ = cifar_loaders(root, "cifar10", batch_size=15, seed=3)
    b, _ = cifar_loaders(root, "cifar10", batch_size=15, seed=3)
    torch.manual_seed(0)
    xa, ya = next(iter(a))
    torch.manual_seed(0)
    xb, yb = next(iter(b))
    assert xa.shape == (15, 3, 32, 32) and torch.equal(ya, yb) and torch.equal(xa, xb)


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = _write_batch(folder / "train", 5, b"fine_labels", 1, classes=100)
    _write_batch(folder / "test", 2, b"fine_labels", 2, classes=100)
    train_loader, test_loader = get_loaders("cifar100", tmp_path, batch_size=5, augment=False)
    _, y = next(iter(train_loader))
    assert sorted(y.tolist()) == sorted(train[b"fine_labels"]) and len(test_loader.dataset) == 2


def test_cifar_missing_or_malformed_folders_name_the_layout(tmp_path, cifar10_root):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        cifar_loaders(tmp_path / "absent", "cifar10")
    root, _, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3 is missing.*data_batch_1\.\.5"):
        cifar_loaders(root, "cifar10")
    bad = tmp_path / "bad" / "cifar-10-batches-py"
    bad.mkdir(parents=True)
    (bad / "test_batch").write_bytes(b"\x80\x04 not a pickle")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        CifarPickleDataset(bad.parent, "cifar10", train=False)
    with open(bad / "test_batch", "wb") as f:
        pickle.dump({b"images": []}, f)
    with pytest.raises(ValueError, match="b'data'"):
        CifarPickleDataset(bad.parent, "cifar10", train=False)
    with open(bad / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"\(2, 100\).*3072"):
        CifarPickleDataset(bad.parent, "cifar10", train=False)


def _write_imagefolder(root, classes=("cat", "dog"), per_class=2, size=40):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_imagefolder_tree_loads_with_labels_and_topk(tmp_path):
    _write_imagefolder(tmp_path)
    train_loader, val_loader = imagefolder_loaders(tmp_path, input_size=32, batch_size=4)
    x, y = next(iter(train_loader))
    assert x.shape == (4, 3, 32, 32) and sorted(y.tolist()) == [0, 0, 1, 1]
    xv, yv = next(iter(val_loader))
    assert xv.shape == (4, 3, 32, 32) and yv.tolist() == [0, 0, 1, 1]
    assert DATASET_SPECS["ilsvrc12"].topk == (1, 5)


def test_imagefolder_missing_split_or_empty_tree(tmp_path):
    _write_imagefolder(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "val")
    with pytest.raises(FileNotFoundError, match=r"val does not exist.*ROOT/train/<class>"):
        get_loaders("ilsvrc12", tmp_path)
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        imagefolder_loaders(tmp_path)


def test_digits_split_is_deterministic_stratified_and_disjoint():
    x_train, y_train, x_test, y_test = digits_tensors(16, seed=0)
    again = digits_tensors(16, seed=0)
    assert torch.equal(x_train, again[0]) and torch.equal(y_test, again[3])
    assert x_train.shape == (1347, 3, 16, 16) and x_test.shape == (450, 3, 16, 16)
    assert torch.equal(x_train[:, 0], x_train[:, 2])  # channels by repetition
    counts = torch.bincount(y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46  # stratified: ~45 per class
    assert abs(x_train.mean().item()) < 1e-4 and abs(x_train.std().item() - 1) < 1e-4
    flat_train = {tuple(r.tolist()) for r in x_train[:, 0].flatten(1)[:, ::9]}
    other = digits_tensors(16, seed=1)[2]
    assert not torch.equal(other, x_test)  # another seed, another split
    assert sum(tuple(r.tolist()) in flat_train for r in x_test[:, 0].flatten(1)[:, ::9]) < 10  # ~no leakage


def test_digits_loaders_and_dispatch():
    train_loader, test_loader = digits_loaders(input_size=32, batch_size=50)
    x, y = next(iter(train_loader))
    assert x.shape == (50, 3, 32, 32) and y.dtype == torch.long
    assert len(test_loader.dataset) == 450
    a, _ = get_loaders("digits", batch_size=8, input_size=12, seed=5)
    b, _ = get_loaders("digits", batch_size=8, input_size=12, seed=5)
    assert torch.equal(next(iter(a))[1], next(iter(b))[1])


def test_dispatch_errors_and_data_option():
    with pytest.raises(ValueError, match="needs a data folder.*cifar-10-batches-py"):
        get_loaders("cifar10")
    with pytest.raises(ValueError, match="choose from cifar10, cifar100, digits, ilsvrc12"):
        get_loaders("mnist")
    with pytest.raises(ValueError, match="batch_size"):
        digits_loaders(batch_size=0)
    assert parse_data_option("cifar10=/data/c") == ("cifar10", "/data/c")
    assert parse_data_option("digits") == ("digits", None)
    with pytest.raises(ValueError, match="unknown dataset"):
        parse_data_option("svhn=/x")


# ---------------------------------------------------------------- untrusted files: parsed, never run

class _Poison:
    """Unpickling this calls open(marker, "w"): a real pickle that writes a file when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_poisoned_cifar_batch_is_refused_and_runs_nothing(cifar10_root, tmp_path):
    root, _, _ = cifar10_root
    marker = tmp_path / "pwned"
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    entry = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _Poison(marker)}
    batch.write_bytes(pickle.dumps(entry, protocol=2))
    with open(tmp_path / "check", "wb") as f:  # the poison is real: plain pickle would run it
        f.write(pickle.dumps(_Poison(tmp_path / "proof")))
    pickle.loads((tmp_path / "check").read_bytes()).close()
    assert (tmp_path / "proof").exists()
    from slimbench.data import UnsafePickleError

    with pytest.raises(UnsafePickleError, match=r"data_batch_3 is not a plain CIFAR batch.*refusing io\.open"):
        get_loaders("cifar10", root)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_of_every_protocol_still_load(tmp_path, protocol):
    from slimbench.data import load_data_pickle

    data = {b"data": np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 4],
            b"filenames": [b"a.png", b"b.png"], b"batch_label": b"training batch 1 of 5", b"n": np.int64(7)}
    (tmp_path / "b").write_bytes(pickle.dumps(data, protocol=protocol))
    back = load_data_pickle(tmp_path / "b")
    assert np.array_equal(back[b"data"], data[b"data"]) and back[b"labels"] == [3, 4] and back[b"n"] == 7


def test_labels_out_of_range_fail_before_training(cifar10_root):
    root, _, _ = cifar10_root
    entry = pickle.loads((root / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    entry[b"labels"][1] = 42
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(entry))
    with pytest.raises(ValueError, match=r"data_batch_2 has 1 label\(s\) outside 0\.\.9 \(first: row 1, label 42\)"):
        get_loaders("cifar10", root)


def test_a_non_image_in_an_imagefolder_fails_up_front(tmp_path):
    _write_imagefolder(tmp_path)
    (tmp_path / "val" / "dog" / "notes.png").write_text("<html>not an image</html>")
    with pytest.raises(ValueError, match=r"val/dog/notes\.png is not a readable image"):
        imagefolder_loaders(tmp_path, input_size=32, batch_size=4)


def test_data_options_that_would_be_ignored_or_misread(tmp_path):
    with pytest.raises(ValueError, match="digits is bundled and reads no data folder"):
        get_loaders("digits", tmp_path)
    with pytest.raises(ValueError, match=r"--data .*: say which data set.*cifar10="):
        parse_data_option(str(tmp_path))
