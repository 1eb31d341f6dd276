"""Loaders for the datasets used in the experiments, read from their official on-disk formats.

Formats read (no third-party dataset library is needed at load time):

- ``digits``: scikit-learn's bundled ``load_digits()`` (offline demo set), split 80/20 with a
  fixed stratified ``train_test_split(random_state=0)``.
- ``cifar10``: the official python layout ``cifar-10-batches-py/{data_batch_1..5, test_batch,
  batches.meta}`` (pickles). ``torchvision.datasets.CIFAR10`` is used only to download them.
- ``cifar10n``: the CIFAR-10 pickles plus the official CIFAR-10N label file ``CIFAR-10_human.pt``
  (a ``torch.save`` dict of numpy arrays, in the CIFAR-10 training order).
- ``agnews``: the Zhang et al. CSV layout ``train.csv``/``test.csv`` (class 1..4, title,
  description), tokenised like torchtext's ``basic_english`` with a vocabulary built on the
  training split as ``torchtext.vocab.build_vocab_from_iterator`` does (fidelity §6.2).
- ``clothing1m``: the released layout (``images/``, ``*_label_kv.txt``, ``*_key_list.txt``); the
  images are decoded lazily (``ImageFiles``), because the 1M training images do not fit in memory.
- ``imagefolder``, ``csv-text``: a user's own data (``data.own_data``): `data-dir` is the training
  folder or CSV file, `test-dir` the server's test folder or file (optional).

The md5 sums of the CIFAR-10 pickles are deliberately NOT checked: the copy available to this
project is a faithful rebuild of the official layout (same order, labels and metadata) whose
bytes differ from the official files, and torchvision's md5 check would reject it.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pickle
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.own_data import (
    OWN_FORMATS,
    OwnDataError,
    OwnDataSpec,
    label_indices,
    list_image_folder,
    load_images,
    read_text_csv,
    read_vocab_file,
)

DATASET_NAMES = ("digits", "cifar10", "cifar10n", "agnews", "clothing1m", *OWN_FORMATS)
CIFAR10N_LABEL_KEYS = {
    "aggre": "aggre_label",
    "worse": "worse_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
}

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
CIFAR10N_FILE = "CIFAR-10_human.pt"

AGNEWS_CLASS_NAMES = ("World", "Sports", "Business", "Sci/Tech")
AGNEWS_SPECIALS = ("<unk>", "<pad>", "<bos>", "<eos>")  # indices 0, 1, 2, 3

CLOTHING1M_FILES = (
    "images",
    "noisy_label_kv.txt",
    "clean_label_kv.txt",
    "noisy_train_key_list.txt",
    "clean_test_key_list.txt",
)
CLOTHING1M_NUM_CLASSES = 14
CLOTHING1M_IMAGE_SIZE = 224


class DatasetNotFoundError(FileNotFoundError):
    """The data files of a dataset are missing; the message names every expected path."""


class ImageFiles:
    """Lazily decoded image files: ``root / relative_paths[i]``, decoded on indexing.

    Indexing with an int array, a list or a slice returns a uint8 array ``[k, 3, size, size]``;
    a single int returns ``[3, size, size]`` (like indexing a stored numpy array). Each image is
    opened with PIL, converted to RGB and resized to ``size x size`` with bilinear filtering, as
    ``torchvision.transforms.Resize((224, 224))`` does on PIL images in the authors' Clothing1M
    code (resize only, no crop).
    """

    def __init__(self, root: str | os.PathLike, relative_paths: Sequence[str], size: int = 224):
        self.root = Path(root)
        self.relative_paths = np.asarray(relative_paths, dtype=str)
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.relative_paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.size, self.size)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def load_one(self, relative_path: str) -> np.ndarray:
        """Decode one image to uint8 ``[3, size, size]``."""
        from PIL import Image

        with Image.open(self.root / relative_path) as img:
            img = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)

    def __getitem__(self, indices) -> np.ndarray:
        if isinstance(indices, slice):
            paths = self.relative_paths[indices]
        else:
            idx = np.asarray(indices)
            if idx.ndim == 0:
                return self.load_one(self.relative_paths[int(idx)])
            paths = self.relative_paths[idx if idx.dtype == bool else idx.astype(np.int64)]
        out = np.empty((len(paths), 3, self.size, self.size), dtype=np.uint8)
        for i, path in enumerate(paths):
            out[i] = self.load_one(path)
        return out

    def __repr__(self) -> str:
        return f"ImageFiles(root={str(self.root)!r}, n={len(self)}, size={self.size})"


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: stored (not yet transformed) inputs and integer labels.

    ``train_labels`` are the labels the data are partitioned with (the clean labels where the
    dataset has them; Clothing1M: its noisy labels). ``train_clean_labels`` holds the clean label
    or -1 where unknown. ``train_human_labels`` holds real noisy labels that replace synthetic
    noise (CIFAR-10-N: the chosen key; Clothing1M: the noisy labels), else None.
    ``train_sample_ids`` names each training sample for a user (own data: the image's path
    relative to data-dir, or the CSV row); None: its position in the training split.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    input_kind: str  # "image" or "text"
    input_shape: tuple[int, ...] | None  # (C, H, W) for images, None for text
    train_inputs: np.ndarray | ImageFiles  # images uint8 [N,C,H,W]; text int64 [N,L]
    train_labels: np.ndarray
    train_clean_labels: np.ndarray
    train_human_labels: np.ndarray | None
    test_inputs: np.ndarray | ImageFiles
    test_labels: np.ndarray
    vocab_size: int = 0
    pad_index: int = 1
    train_sample_ids: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# Validation of names and files (cheap, before any loading)
# --------------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASET_NAMES)}")


def _check_cifar10n_key(key: str) -> None:
    if key not in CIFAR10N_LABEL_KEYS:
        raise ValueError(
            f"unknown CIFAR-10-N label set {key!r}; allowed: {', '.join(CIFAR10N_LABEL_KEYS)}"
        )


def _data_dir(name: str, data_dir) -> Path:
    if data_dir is None or str(data_dir) == "":
        raise DatasetNotFoundError(
            f"dataset {name!r} needs a data dir, but none was given; expected in it: "
            + ", ".join(_expected_names(name))
        )
    return Path(data_dir).expanduser()


def _expected_names(name: str) -> list[str]:
    if name in ("cifar10", "cifar10n"):
        files = [
            f"{CIFAR10_FOLDER}/{f}"
            for f in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE, CIFAR10_META_FILE)
        ]
        if name == "cifar10n":
            files.append(CIFAR10N_FILE)
        return files
    if name == "agnews":
        return ["train.csv", "test.csv"]
    if name == "clothing1m":
        return ["images/", *CLOTHING1M_FILES[1:]]
    return []


def _cifar_batches_dir(data_dir: Path) -> Path:
    """The ``cifar-10-batches-py`` folder: inside ``data_dir``, or ``data_dir`` itself."""
    inner = data_dir / CIFAR10_FOLDER
    if inner.is_dir():
        return inner
    if data_dir.name == CIFAR10_FOLDER or (data_dir / CIFAR10_META_FILE).is_file():
        return data_dir
    return inner


def _cifar_missing(data_dir: Path) -> list[Path]:
    batches = _cifar_batches_dir(data_dir)
    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE, CIFAR10_META_FILE)
    return [batches / f for f in names if not (batches / f).is_file()]


def _cifar10n_candidates(data_dir: Path) -> list[Path]:
    candidates = [data_dir / CIFAR10N_FILE, _cifar_batches_dir(data_dir) / CIFAR10N_FILE]
    return list(dict.fromkeys(candidates))  # de-duplicate, keep order


def _not_found(name: str, data_dir: Path, missing: Iterable[Path], note: str = "") -> None:
    missing = list(missing)
    if missing:
        raise DatasetNotFoundError(
            f"dataset {name!r} not found in data dir '{data_dir}': missing "
            + ", ".join(str(p) for p in missing)
            + f". Expected: {', '.join(_expected_names(name))}"
            + (f". {note}" if note else "")
        )


def check_data_files(
    name: str,
    data_dir,
    *,
    download: bool = False,
    cifar10n_labels: str = "worse",
    own: OwnDataSpec | None = None,
) -> None:
    """Check cheaply that a dataset's files are present, before anything is loaded.

    Raises ValueError for an unknown dataset name or CIFAR-10-N label key (naming the allowed
    values) and DatasetNotFoundError naming the data dir and every expected file or folder.
    With ``download=True`` missing CIFAR-10 pickles are accepted (they will be downloaded), but
    the CIFAR-10-N label file, AG News and Clothing1M cannot be downloaded.
    """
    _check_name(name)
    if name == "cifar10n":
        _check_cifar10n_key(cifar10n_labels)
    if name == "digits":
        return
    if name in OWN_FORMATS:
        _check_own_files(name, data_dir, own or OwnDataSpec())
        return
    root = _data_dir(name, data_dir)
    if name in ("cifar10", "cifar10n"):
        if not download:
            hint = "Set download=true to fetch the CIFAR-10 pickles with torchvision"
            _not_found(name, root, _cifar_missing(root), hint)
        if name == "cifar10n":
            candidates = _cifar10n_candidates(root)
            if not any(p.is_file() for p in candidates):
                _not_found(
                    name,
                    root,
                    [candidates[0]],
                    f"{CIFAR10N_FILE} (the official CIFAR-10N label file) is searched in: "
                    + ", ".join(str(p) for p in candidates)
                    + "; it cannot be downloaded",
                )
    elif name == "agnews":
        _not_found(
            name, root, [root / f for f in ("train.csv", "test.csv") if not (root / f).is_file()]
        )
    elif name == "clothing1m":
        missing = [root / "images"] if not (root / "images").is_dir() else []
        missing += [root / f for f in CLOTHING1M_FILES[1:] if not (root / f).is_file()]
        _not_found(name, root, missing)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None,
    *,
    download: bool = False,
    cifar10n_labels: str = "worse",
    own: OwnDataSpec | None = None,
) -> Dataset:
    """Load dataset ``name`` from ``data_dir`` (ignored for ``digits``; for the own-data formats
    described by ``own``, it may be empty: then the training split is empty, as on a deployed
    server whose clients hold the data).

    ``cifar10n_labels`` picks the CIFAR-10-N label set (a key of CIFAR10N_LABEL_KEYS; the
    authors' script uses "worse", 40.21 % noisy). ``download=True`` lets torchvision fetch
    missing CIFAR-10 pickles.
    """
    check_data_files(name, data_dir, download=download, cifar10n_labels=cifar10n_labels, own=own)
    if name == "digits":
        return _load_digits()
    if name == "imagefolder":
        return load_image_folder_dataset(data_dir or None, own or OwnDataSpec())
    if name == "csv-text":
        return load_csv_text_dataset(data_dir or None, own or OwnDataSpec())
    root = _data_dir(name, data_dir)
    if name == "cifar10":
        return _load_cifar10(root, download=download)
    if name == "cifar10n":
        return _load_cifar10n(root, download=download, key=cifar10n_labels)
    if name == "agnews":
        return _load_agnews(root)
    return _load_clothing1m(root)


def _load_digits() -> Dataset:
    """scikit-learn digits: 1797 8x8 images (values 0..16), fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.uint8).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0
    )
    return Dataset(
        name="digits",
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        input_kind="image",
        input_shape=(1, 8, 8),
        train_inputs=np.ascontiguousarray(x_train),
        train_labels=y_train,
        train_clean_labels=y_train.copy(),
        train_human_labels=None,
        test_inputs=np.ascontiguousarray(x_test),
        test_labels=y_test,
    )


def _read_pickle(path: Path) -> dict:
    """A CIFAR pickle; ValueError naming the file when it cannot be read (truncated, not a
    pickle, unreadable)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: cannot be read as a CIFAR-10 pickle ({err})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: not a CIFAR-10 pickle (it holds a {type(entry).__name__})")
    return entry


def _read_cifar10(root: Path, download: bool, name: str = "cifar10"):
    """Read the CIFAR-10 pickles: (x_train, y_train, x_test, y_test, class_names)."""
    if download and _cifar_missing(root):
        import torchvision

        for train in (True, False):
            torchvision.datasets.CIFAR10(root=str(root), train=train, download=True)
        _not_found(name, root, _cifar_missing(root), "the download did not produce them")
    batches = _cifar_batches_dir(root)
    x_train, y_train = _read_cifar_batches(batches, CIFAR10_TRAIN_FILES)
    x_test, y_test = _read_cifar_batches(batches, [CIFAR10_TEST_FILE])
    meta = _read_pickle(batches / CIFAR10_META_FILE)
    names = tuple(n.decode("utf-8") for n in meta[b"label_names"])
    return x_train, y_train, x_test, y_test, names


def _read_cifar_batches(batches: Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 [N, 3, 32, 32]) and labels of the CIFAR-10 pickles `names`, in order."""
    xs, ys = [], []
    for fname in names:
        entry = _read_pickle(batches / fname)
        try:
            x = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(entry[b"labels"], dtype=np.int64)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{batches / fname}: not a CIFAR-10 batch ({err!r})") from None
        if len(x) != len(y):
            raise ValueError(f"{batches / fname}: {len(x)} images but {len(y)} labels")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _load_cifar10(root: Path, download: bool) -> Dataset:
    return _cifar10_dataset(*_read_cifar10(root, download))


def _cifar10_dataset(x_train, y_train, x_test, y_test, names) -> Dataset:
    return Dataset(
        name="cifar10",
        num_classes=10,
        class_names=names,
        input_kind="image",
        input_shape=(3, 32, 32),
        train_inputs=x_train,
        train_labels=y_train,
        train_clean_labels=y_train.copy(),
        train_human_labels=None,
        test_inputs=x_test,
        test_labels=y_test,
    )


def _load_cifar10n(root: Path, download: bool, key: str) -> Dataset:
    """CIFAR-10 images + CIFAR-10N human labels; partition labels stay the clean ones (§6.5)."""
    x_train, y_train, x_test, y_test, names = _read_cifar10(root, download, "cifar10n")
    path = next(p for p in _cifar10n_candidates(root) if p.is_file())
    human = _read_cifar10n_labels(path, y_train, key, _cifar_batches_dir(root))
    cifar10 = _cifar10_dataset(x_train, y_train, x_test, y_test, names)
    return dataclasses.replace(cifar10, name="cifar10n", train_human_labels=human)


def _read_cifar10n_labels(path: Path, y_train: np.ndarray, key: str, images: Path) -> np.ndarray:
    """The human labels `key` of the CIFAR-10N file `path`, checked against the training labels
    of the images they belong to (its `clean_label` must equal them, in order)."""
    import torch

    labels = torch.load(path, weights_only=False)
    field = CIFAR10N_LABEL_KEYS[key]
    for needed in ("clean_label", field):
        if not isinstance(labels, dict) or needed not in labels:
            raise ValueError(f"{path} has no {needed!r} array; is it the CIFAR-10N label file?")
    clean = np.asarray(labels["clean_label"], dtype=np.int64)
    human = np.asarray(labels[field], dtype=np.int64)
    if clean.shape != y_train.shape or not np.array_equal(clean, y_train):
        n_diff = int((clean != y_train).sum()) if clean.shape == y_train.shape else -1
        raise ValueError(
            f"'clean_label' in {path} (shape {clean.shape}) does not equal the CIFAR-10 training "
            f"labels of {images} (shape {y_train.shape}"
            + (f", {n_diff} positions differ" if n_diff >= 0 else "")
            + "): wrong label file or wrong image order"
        )
    if human.shape != y_train.shape:
        raise ValueError(f"{field!r} in {path} has shape {human.shape}, expected {y_train.shape}")
    return human


# --- One client's own data (a SuperNode with a data-dir) ---------------------------------------

OWN_DATA_DATASETS = ("cifar10", "cifar10n", *OWN_FORMATS)


def load_own_training_data(
    name: str, data_dir, *, cifar10n_labels: str = "worse", own: OwnDataSpec | None = None
) -> Dataset:
    """One client's own training data, for a SuperNode whose node-config has a `data-dir`.

    The folder holds that client's images in the dataset's official layout: the CIFAR-10 python
    pickles `batches.meta` and one or more `data_batch_*` (read in name order; no `test_batch`
    is needed, the server evaluates), in `cifar-10-batches-py/` or in the folder itself; for
    cifar10n also `CIFAR-10_human.pt` with the labels of exactly those images, in that order.
    The test split of the returned Dataset is empty. `digits` is embedded and `agnews` builds its
    vocabulary from the whole training split, so neither can be split into own folders.
    `imagefolder` and `csv-text` (data.own_data, described by `own`) read the client's folder or
    CSV file with the federation's class list, which must then be given, and csv-text the shared
    `vocab-file`.
    """
    _check_name(name)
    if name in OWN_FORMATS:
        own = own or OwnDataSpec()
        _classes_or_refuse(own, f"a client with its own {name} data")
        if name == "csv-text" and not own.vocab_file:
            raise OwnDataError(
                "a client with its own csv-text data needs vocab-file, the vocabulary every "
                "node shares (python -m data.own_data vocab ...)"
            )
        check_data_files(name, data_dir, own=own)
        blind = dataclasses.replace(own, test_dir="")  # the server evaluates, not the client
        if name == "imagefolder":
            return load_image_folder_dataset(data_dir, blind)
        return load_csv_text_dataset(data_dir, blind)
    if name not in OWN_DATA_DATASETS:
        raise ValueError(
            f"dataset {name!r} cannot be read from a client's own data-dir (node-config); "
            f"allowed: {', '.join(OWN_DATA_DATASETS)}. Give the SuperNode partition-id and "
            "num-partitions without data-dir to carve the shared dataset instead"
        )
    if name == "cifar10n":
        _check_cifar10n_key(cifar10n_labels)
    root = Path(str(data_dir)).expanduser()
    batches = _cifar_batches_dir(root)
    files = sorted(p.name for p in batches.glob("data_batch_*")) if batches.is_dir() else []
    missing = [batches / f for f in (CIFAR10_META_FILE,) if not (batches / f).is_file()]
    if not files:
        missing.append(batches / "data_batch_*")
    if name == "cifar10n" and not any(p.is_file() for p in _cifar10n_candidates(root)):
        missing.append(_cifar10n_candidates(root)[0])
    if missing:
        raise DatasetNotFoundError(
            f"this client's own {name} data not found in data-dir '{root}': missing "
            + ", ".join(str(p) for p in missing)
            + f". Expected: {CIFAR10_FOLDER}/{CIFAR10_META_FILE} and one or more "
            f"{CIFAR10_FOLDER}/data_batch_* (the official CIFAR-10 pickles)"
            + (f", and {CIFAR10N_FILE} with these images' labels" if name == "cifar10n" else "")
        )
    x_train, y_train = _read_cifar_batches(batches, files)
    meta = _read_pickle(batches / CIFAR10_META_FILE)
    names = tuple(n.decode("utf-8") for n in meta[b"label_names"])
    empty = (np.zeros((0, 3, 32, 32), dtype=np.uint8), np.zeros(0, dtype=np.int64))
    own = _cifar10_dataset(x_train, y_train, *empty, names)
    if name == "cifar10":
        return own
    path = next(p for p in _cifar10n_candidates(root) if p.is_file())
    human = _read_cifar10n_labels(path, y_train, cifar10n_labels, batches)
    return dataclasses.replace(own, name="cifar10n", train_human_labels=human)


# --- AG News ---------------------------------------------------------------------------------

_BASIC_ENGLISH = [
    (re.compile(p), r)
    for p, r in [
        (r"\'", " '  "),
        (r"\"", ""),
        (r"\.", " . "),
        (r"<br \/>", " "),
        (r",", " , "),
        (r"\(", " ( "),
        (r"\)", " ) "),
        (r"\!", " ! "),
        (r"\?", " ? "),
        (r"\;", " "),
        (r"\:", " "),
        (r"\s+", " "),
    ]
]


def basic_english_tokenize(line: str) -> list[str]:
    """torchtext's ``basic_english`` tokenizer: lower-case, regex replacements, split."""
    line = line.lower()
    for pattern, replacement in _BASIC_ENGLISH:
        line = pattern.sub(replacement, line)
    return line.split()


def build_vocab(token_lists: Iterable[Sequence[str]]) -> dict[str, int]:
    """Vocabulary as torchtext 0.15's ``build_vocab_from_iterator(..., specials=...)``.

    Specials first (``<unk>``=0, ``<pad>``=1, ``<bos>``=2, ``<eos>``=3), then every token by
    descending frequency; equal frequencies are ordered lexicographically (torchtext sorts by
    ``(-count, token)``). A token equal to a special keeps the special's index.
    """
    counter: Counter[str] = Counter()
    for tokens in token_lists:
        counter.update(tokens)
    vocab = {tok: i for i, tok in enumerate(AGNEWS_SPECIALS)}
    for tok, _ in sorted(counter.items(), key=lambda item: (-item[1], item[0])):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    return vocab


def _read_agnews_csv(path: Path) -> tuple[list[list[str]], np.ndarray]:
    """Rows ``"class","title","description"`` -> (token lists, labels 0..3)."""
    tokens, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < 2 or row[0].strip() not in ("1", "2", "3", "4"):
                raise ValueError(
                    f"{path} line {line_no}: expected 3 fields (class 1..4, title, description), "
                    f"got {row[:3]!r}"
                )
            labels.append(int(row[0]) - 1)
            # torchtext's AG_NEWS joins the text fields with a space (title + " " + description)
            tokens.append(basic_english_tokenize(" ".join(row[1:])))
    return tokens, np.asarray(labels, dtype=np.int64)


def _encode(token_lists: Sequence[Sequence[str]], vocab: dict[str, int], pad: int) -> np.ndarray:
    """int64 [N, Lmax], right-padded with ``pad``; unknown tokens -> 0; empty text -> [<unk>]."""
    ids = [[vocab.get(t, 0) for t in tokens] or [0] for tokens in token_lists]
    out = np.full((len(ids), max((len(s) for s in ids), default=1)), pad, dtype=np.int64)
    for i, seq in enumerate(ids):
        out[i, : len(seq)] = seq
    return out


def _load_agnews(root: Path) -> Dataset:
    train_tokens, y_train = _read_agnews_csv(root / "train.csv")
    test_tokens, y_test = _read_agnews_csv(root / "test.csv")
    vocab = build_vocab(train_tokens)
    pad = vocab["<pad>"]
    return Dataset(
        name="agnews",
        num_classes=4,
        class_names=AGNEWS_CLASS_NAMES,
        input_kind="text",
        input_shape=None,
        train_inputs=_encode(train_tokens, vocab, pad),
        train_labels=y_train,
        train_clean_labels=y_train.copy(),
        train_human_labels=None,
        test_inputs=_encode(test_tokens, vocab, pad),
        test_labels=y_test,
        vocab_size=len(vocab),
        pad_index=pad,
    )


# --- Clothing1M ------------------------------------------------------------------------------


def _read_kv(path: Path) -> dict[str, int]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                out[parts[0]] = int(parts[1])
    return out


def _read_keys(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _load_clothing1m(root: Path) -> Dataset:
    """Train = noisy_train_key_list (noisy labels); test = clean_test_key_list (clean labels)."""
    noisy = _read_kv(root / "noisy_label_kv.txt")
    clean = _read_kv(root / "clean_label_kv.txt")
    train_keys = _read_keys(root / "noisy_train_key_list.txt")
    test_keys = _read_keys(root / "clean_test_key_list.txt")
    for keys, table, kv_name in (
        (train_keys, noisy, "noisy_label_kv.txt"),
        (test_keys, clean, "clean_label_kv.txt"),
    ):
        missing = [k for k in keys if k not in table]
        if missing:
            raise ValueError(
                f"{len(missing)} keys have no label in {root / kv_name}, e.g. {missing[0]!r}"
            )
    y_train = np.asarray([noisy[k] for k in train_keys], dtype=np.int64)
    y_train_clean = np.asarray([clean.get(k, -1) for k in train_keys], dtype=np.int64)
    y_test = np.asarray([clean[k] for k in test_keys], dtype=np.int64)
    names_file = root / "category_names_eng.txt"
    names = tuple(str(i) for i in range(CLOTHING1M_NUM_CLASSES))
    if names_file.is_file():
        lines = [ln.strip() for ln in names_file.read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if ln]
        if len(lines) != CLOTHING1M_NUM_CLASSES:
            raise ValueError(
                f"{names_file} has {len(lines)} non-empty lines, expected {CLOTHING1M_NUM_CLASSES}"
            )
        names = tuple(lines)
    size = CLOTHING1M_IMAGE_SIZE
    return Dataset(
        name="clothing1m",
        num_classes=CLOTHING1M_NUM_CLASSES,
        class_names=names,
        input_kind="image",
        input_shape=(3, size, size),
        train_inputs=ImageFiles(root, train_keys, size=size),
        train_labels=y_train,
        train_clean_labels=y_train_clean,
        train_human_labels=y_train.copy(),
        test_inputs=ImageFiles(root, test_keys, size=size),
        test_labels=y_test,
    )


# --- Users' own data (data.own_data) -----------------------------------------------------------


def _csv_path(path: str | os.PathLike, default_name: str) -> Path:
    """A CSV file, or a folder holding `default_name`."""
    path = Path(path).expanduser()
    return path / default_name if path.is_dir() else path


def _check_own_files(name: str, data_dir, own: OwnDataSpec) -> None:
    """The own-data keys are consistent and the named files exist (OwnDataError otherwise)."""
    own.class_list()  # a bad classes / classes-file value
    for key, value, default_name in (
        ("data-dir", data_dir, "train.csv"),
        ("test-dir", own.test_dir, "test.csv"),
    ):
        if not value:
            continue
        path = Path(str(value)).expanduser()
        if name == "imagefolder" and not path.is_dir():
            raise DatasetNotFoundError(
                f"{key}='{path}' is not a folder: dataset 'imagefolder' reads root/<class>/<image>"
            )
        if name == "csv-text" and not _csv_path(path, default_name).is_file():
            raise DatasetNotFoundError(
                f"{key}='{path}': no CSV file there (give a .csv file, or a folder holding "
                f"{default_name})"
            )
    if name == "csv-text" and not data_dir and not own.vocab_file:
        raise OwnDataError(
            "dataset 'csv-text' with the clients' own CSV files (no data-dir in the run config) "
            "needs vocab-file: the vocabulary every node shares (python -m data.own_data vocab "
            "...)"
        )
    if own.vocab_file:
        read_vocab_file(own.vocab_file)


def _classes_or_refuse(own: OwnDataSpec, what: str) -> tuple[str, ...]:
    classes = own.class_list()
    if not classes:
        raise OwnDataError(
            f"{what} needs the federation's class list: set classes (e.g. classes='cat,dog') or "
            "classes-file, so that every client numbers the classes the same way"
        )
    return classes


def load_image_folder_dataset(train_root, own: OwnDataSpec) -> Dataset:
    """An `imagefolder` Dataset: training images from `train_root` (None: none, e.g. a deployed
    server), test images from `own.test_dir` (empty: none). The labels are taken as given; as
    the clean reference they are what synthetic noise (if any) corrupts."""
    classes = own.class_list()
    if train_root is None:
        classes = _classes_or_refuse(own, "a server without a training folder (data-dir)")
        paths, labels = [], np.zeros(0, dtype=np.int64)
    else:
        classes, paths, labels = list_image_folder(train_root, classes)
    size, channels = own.image_size, own.image_channels
    train = (
        load_images(train_root, paths, size, channels)
        if paths
        else np.zeros((0, channels, size, size), dtype=np.uint8)
    )
    if own.test_dir:
        _, test_paths, test_labels = list_image_folder(own.test_dir, classes)
        test = load_images(own.test_dir, test_paths, size, channels)
    else:
        test, test_labels = np.zeros((0, channels, size, size), np.uint8), np.zeros(0, np.int64)
    return Dataset(
        name="imagefolder",
        num_classes=len(classes),
        class_names=tuple(classes),
        input_kind="image",
        input_shape=(channels, size, size),
        train_inputs=train,
        train_labels=labels,
        train_clean_labels=labels.copy(),
        train_human_labels=None,
        test_inputs=test,
        test_labels=test_labels,
        train_sample_ids=np.asarray(paths, dtype=str),
    )


def load_csv_text_dataset(train_path, own: OwnDataSpec) -> Dataset:
    """A `csv-text` Dataset: training rows from `train_path` (a CSV file or a folder with
    train.csv; None: none), test rows from `own.test_dir` (a CSV or a folder with test.csv).
    The vocabulary is `own.vocab_file`, else built from the training text as for AG News."""
    from_classes = own.class_list()
    texts, names, ids = [], [], []
    if train_path is not None:
        path = _csv_path(train_path, "train.csv")
        texts, names, ids = read_text_csv(path, own.text_column, own.label_column)
    elif not from_classes:
        _classes_or_refuse(own, "a server without a training CSV (data-dir)")
    classes = from_classes or tuple(sorted(set(names)))
    if len(classes) < 2:
        raise OwnDataError(f"'{train_path}': at least 2 classes are needed, found {classes}")
    labels = label_indices(names, classes, f"CSV file '{train_path}'")
    tokens = [basic_english_tokenize(text) for text in texts]
    vocab = read_vocab_file(own.vocab_file) if own.vocab_file else build_vocab(tokens)
    pad = vocab["<pad>"]
    if own.test_dir:
        test_path = _csv_path(own.test_dir, "test.csv")
        test_texts, test_names, _ = read_text_csv(test_path, own.text_column, own.label_column)
        test_labels = label_indices(test_names, classes, f"CSV file '{test_path}'")
        test = _encode([basic_english_tokenize(t) for t in test_texts], vocab, pad)
    else:
        test, test_labels = np.full((0, 1), pad, dtype=np.int64), np.zeros(0, dtype=np.int64)
    train = _encode(tokens, vocab, pad) if tokens else np.full((0, 1), pad, dtype=np.int64)
    return Dataset(
        name="csv-text",
        num_classes=len(classes),
        class_names=tuple(classes),
        input_kind="text",
        input_shape=None,
        train_inputs=train,
        train_labels=labels,
        train_clean_labels=labels.copy(),
        train_human_labels=None,
        test_inputs=test,
        test_labels=test_labels,
        vocab_size=len(vocab),
        pad_index=pad,
        train_sample_ids=np.asarray(ids, dtype=str),
    )
