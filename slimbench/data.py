"""Data to measure accuracy on: CIFAR-10/100 from local pickles, ILSVRC12 from an ImageFolder tree,
and scikit-learn's bundled handwritten digits (real data on a fresh machine, no download).

Every builder returns ``(train_loader, test_loader)``; ``get_loaders(dataset, root)`` dispatches by
name. Loaders use ``num_workers=0`` by default (small machines) and seeded shuffling.
"""

from __future__ import annotations

import os
import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from torchvision import transforms

from slimbench.core.errors import SlimbenchValueError

__all__ = ["DatasetSpec", "DATASET_SPECS", "CifarPickleDataset", "cifar_loaders", "imagefolder_loaders",
           "digits_loaders", "digits_tensors", "get_loaders", "parse_data_option", "make_loader",
           "load_data_pickle", "UnsafePickleError", "check_images"]

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    topk: tuple[int, ...]
    needs_root: bool
    layout: str


DATASET_SPECS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", 10, (3, 32, 32), (1,), True,
                           "ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch} (official python pickles)"),
    "cifar100": DatasetSpec("cifar100", 100, (3, 32, 32), (1,), True,
                            "ROOT/cifar-100-python/{train, test} (official python pickles)"),
    "digits": DatasetSpec("digits", 10, (3, 32, 32), (1,), False,
                          "bundled with scikit-learn (sklearn.datasets.load_digits), no folder needed"),
    "ilsvrc12": DatasetSpec("ilsvrc12", 1000, (3, 224, 224), (1, 5), True,
                            "ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG (ImageFolder)"),
}


def _spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASET_SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASET_SPECS)}")
    return DATASET_SPECS[dataset]


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                distributed: bool = False, drop_last: bool = False) -> DataLoader:
    """A DataLoader with seeded shuffling; ``distributed`` shards it with a DistributedSampler."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          drop_last=drop_last)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=drop_last)


# ---------------------------------------------------------------- CIFAR (official pickles)

class CifarPickleDataset(Dataset):
    """CIFAR-10/100 from the official python-pickle folder; images kept as one uint8 tensor."""

    def __init__(self, root: str | os.PathLike, dataset: str = "cifar10", train: bool = True,
                 transform=None) -> None:
        if dataset not in CIFAR_LAYOUT:
            raise ValueError(f"CifarPickleDataset: dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
        folder_name, train_files, test_files, label_key = CIFAR_LAYOUT[dataset]
        root = Path(root)
        folder = root / folder_name if (root / folder_name).is_dir() else root
        layout = DATASET_SPECS[dataset].layout
        if not folder.is_dir():
            raise FileNotFoundError(f"{dataset}: data folder {root} does not exist; expected {layout}")
        images, labels = [], []
        for name in train_files if train else test_files:
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{dataset}: {path} is missing; expected {layout}")
            batch = _read_cifar_pickle(path, label_key, dataset)
            images.append(batch[0])
            labels.append(batch[1])
        self.images = torch.from_numpy(np.concatenate(images)).view(-1, 3, 32, 32)
        self.targets = torch.from_numpy(np.concatenate(labels)).long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = self.images[i].float().div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[i])


# Everything the official CIFAR pickles (and numpy's own array pickles, any protocol) need; any
# other global, e.g. os.system in a poisoned download, is refused before it can be called.
_CIFAR_GLOBALS = frozenset({
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "bytearray"),
})


class UnsafePickleError(SlimbenchValueError, pickle.UnpicklingError):
    """A data file asked to load a global that is not plain data: it is refused, never run."""


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and builtin containers, and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise UnsafePickleError(f"refusing {module}.{name}: a CIFAR batch holds only numpy arrays, lists, "
                                    "bytes and dicts")
        return super().find_class(module, name)


def load_data_pickle(path: str | os.PathLike):
    """Read a pickle of plain data (numpy arrays, lists, dicts, bytes, numbers); code is never run."""
    with open(path, "rb") as f:
        return _DataOnlyUnpickler(f, encoding="bytes").load()


def _read_cifar_pickle(path: Path, label_key: bytes, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = load_data_pickle(path)
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{dataset}: {path} is not a plain CIFAR batch, {err}; delete it and download the "
                                "official python version again") from err
    except Exception as err:
        raise ValueError(f"{dataset}: {path} is not a readable CIFAR python pickle (truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(entry, dict) or b"data" not in entry or label_key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{dataset}: {path} lacks the b'data' / {label_key!r} entries of the official "
                         f"format (found {keys})")
    data = np.asarray(entry[b"data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{dataset}: {path} has data of shape {data.shape} and {len(labels)} labels; "
                         "expected (N, 3072) uint8 rows and N labels")
    classes = DATASET_SPECS[dataset].num_classes
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        raise SlimbenchValueError(f"{dataset}: {path} has {bad.size} label(s) outside 0..{classes - 1} "
                                  f"(first: row {bad[0]}, label {labels[bad[0]]}); is it a {dataset} batch?")
    return data, labels


def cifar_loaders(root: str | os.PathLike, dataset: str = "cifar10", *, batch_size: int = 64,
                  test_batch_size: int | None = None, augment: bool = True, seed: int = 0,
                  num_workers: int = 0, distributed: bool = False) -> tuple[DataLoader, DataLoader]:
    """CIFAR with the standard recipe: random crop 32 (pad 4) + horizontal flip for training."""
    mean, std = CIFAR_STATS[dataset] if dataset in CIFAR_STATS else (None, None)
    if mean is None:
        raise ValueError(f"cifar_loaders: dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    normalize = transforms.Normalize(mean, std)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   normalize]) if augment else normalize
    train = CifarPickleDataset(root, dataset, True, train_tf)
    test = CifarPickleDataset(root, dataset, False, normalize)
    return (make_loader(train, batch_size=batch_size, shuffle=True, seed=seed, num_workers=num_workers,
                        distributed=distributed),
            make_loader(test, batch_size=test_batch_size or batch_size, shuffle=False, num_workers=num_workers))


# ---------------------------------------------------------------- ILSVRC12 (ImageFolder)

def imagefolder_loaders(root: str | os.PathLike, *, input_size: int = 224, batch_size: int = 64,
                        test_batch_size: int | None = None, augment: bool = True, seed: int = 0,
                        num_workers: int = 0, distributed: bool = False) -> tuple[DataLoader, DataLoader]:
    """ILSVRC12-style tree: RandomResizedCrop + flip for train; resize to 256/224 of the input, centre crop."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    layout = DATASET_SPECS["ilsvrc12"].layout
    normalize = transforms.Normalize(*IMAGENET_STATS)
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(input_size), transforms.RandomHorizontalFlip()] if augment else
        [transforms.Resize(round(input_size * 256 / 224)), transforms.CenterCrop(input_size)])
    train_tf = transforms.Compose([train_tf, transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.Resize(round(input_size * 256 / 224)), transforms.CenterCrop(input_size),
                                  transforms.ToTensor(), normalize])
    sets = []
    for split, tf in (("train", train_tf), ("val", test_tf)):
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"ilsvrc12: {folder} does not exist; expected {layout}")
        try:
            sets.append(ImageFolder(str(folder), transform=tf))
        except (FileNotFoundError, RuntimeError) as err:
            raise FileNotFoundError(f"ilsvrc12: {folder} holds no class folders with images ({err}); "
                                    f"expected {layout}") from err
    for folder_set in sets:
        check_images([p for p, _ in folder_set.samples])
    if sets[0].classes != sets[1].classes:
        raise ValueError(f"ilsvrc12: {root}/train and {root}/val have different class folders "
                         f"({len(sets[0].classes)} vs {len(sets[1].classes)})")
    return (make_loader(sets[0], batch_size=batch_size, shuffle=True, seed=seed, num_workers=num_workers,
                        distributed=distributed),
            make_loader(sets[1], batch_size=test_batch_size or batch_size, shuffle=False, num_workers=num_workers))


CHECK_ALL_UP_TO = 50_000  # larger trees: a seeded sample of this many files is checked up front


def check_images(paths: list[str], *, limit: int = CHECK_ALL_UP_TO) -> None:
    """Fail before training if a file in an image tree is not an image (reads headers only).

    Trees of up to ``limit`` files are checked whole; a larger one (ILSVRC12's 1.28 M) is checked on a
    seeded sample of ``limit`` files, which opening each file's header keeps to seconds.
    """
    from PIL import Image, UnidentifiedImageError

    chosen = paths if len(paths) <= limit else random.Random(0).sample(paths, limit)
    for path in chosen:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - the header is parsed lazily
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise SlimbenchValueError(f"ilsvrc12: {path} is not a readable image ({type(err).__name__}: {err}); "
                                      "remove it or move it out of the class folders") from err


# ---------------------------------------------------------------- digits (bundled, real)

def digits_tensors(input_size: int = 32, *, test_fraction: float = 0.25, seed: int = 0
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 1,797 handwritten 8x8 digits as ``(x_train, y_train, x_test, y_test)``:
    bilinearly upsampled to ``input_size``, three identical channels, normalised with the training
    split's mean and std; the split is stratified and seeded (same seed, same split)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if input_size < 8:
        raise ValueError(f"digits: input_size must be >= 8 (the images are 8x8), got {input_size}")
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16).unsqueeze(1)
    images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           stratify=digits.target, random_state=seed)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def digits_loaders(input_size: int = 32, batch_size: int = 64, seed: int = 0, *, test_batch_size: int | None = None,
                   test_fraction: float = 0.25, num_workers: int = 0, distributed: bool = False
                   ) -> tuple[DataLoader, DataLoader]:
    """Loaders over :func:`digits_tensors` (no augmentation: digits are not flip-invariant)."""
    x_train, y_train, x_test, y_test = digits_tensors(input_size, test_fraction=test_fraction, seed=seed)
    return (make_loader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, seed=seed,
                        num_workers=num_workers, distributed=distributed),
            make_loader(TensorDataset(x_test, y_test), batch_size=test_batch_size or batch_size, shuffle=False,
                        num_workers=num_workers))


# ---------------------------------------------------------------- dispatch

def get_loaders(dataset: str, root: str | os.PathLike | None = None, *, batch_size: int = 64,
                input_size: int | None = None, seed: int = 0, augment: bool = True, num_workers: int = 0,
                distributed: bool = False, test_batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, test_loader)`` for ``dataset``; ``root`` is required except for digits."""
    spec = _spec(dataset)
    if not spec.needs_root and root is not None:
        raise SlimbenchValueError(f"{dataset} is bundled and reads no data folder, but one was given ({root}); "
                                  "drop --data / root, or choose the data set the folder holds")
    if spec.needs_root and root is None:
        raise ValueError(f"{dataset} needs a data folder (root / --data {dataset}=DIR); expected {spec.layout}. "
                         "Use dataset 'digits' for bundled data that needs none")
    common = dict(batch_size=batch_size, seed=seed, num_workers=num_workers, distributed=distributed,
                  test_batch_size=test_batch_size)
    if dataset == "digits":
        return digits_loaders(input_size or spec.input_shape[-1], **common)
    if dataset == "ilsvrc12":
        return imagefolder_loaders(root, input_size=input_size or 224, augment=augment, **common)
    if input_size not in (None, 32):
        raise ValueError(f"{dataset} images are 32x32; input_size={input_size} is not supported")
    return cifar_loaders(root, dataset, augment=augment, **common)


def parse_data_option(text: str) -> tuple[str, str | None]:
    """``"cifar10=/data/cifar"`` -> ``("cifar10", "/data/cifar")``; ``"digits"`` -> ``("digits", None)``."""
    name, sep, root = text.partition("=")
    if not sep and name not in DATASET_SPECS and (os.sep in name or Path(name).exists()):
        raise SlimbenchValueError(f"--data {text}: say which data set the folder holds, e.g. --data cifar10={text} "
                                  f"(choose from {', '.join(k for k in DATASET_SPECS if k != 'digits')}; or "
                                  "--data digits for the bundled data)")
    _spec(name)
    return name, (root or None)
