"""Users' own data: image folders (`imagefolder`) and CSV text (`csv-text`), labels as they are.

- ``imagefolder``: torchvision's ImageFolder layout, ``root/<class name>/<image>`` (sub-folders
  allowed), any image size and mode; each image is decoded once with PIL, converted to RGB or
  grayscale (`image-channels`) and resized to `image-size` x `image-size` (bilinear), then kept
  as uint8 ``[N, C, S, S]``. The file listing is torchvision's own (``make_dataset`` with its
  ``IMG_EXTENSIONS``); the checks around it are ours, because ImageFolder numbers classes by
  the folders present, and a federation needs one numbering for every client.
- ``csv-text``: a CSV file with a header row; `text-column` holds the text and `label-column`
  the class name. Tokenised as AG News is (torchtext's ``basic_english``, fidelity §6.2); the
  vocabulary is built from the training text, or read from `vocab-file` (one token per line, in
  index order; `python -m data.own_data vocab` writes one).

The class list (`classes`, or `classes-file` with one name per line) fixes the label numbering
for the whole federation. In simulation it may be left empty: then it is the training folder's
class folders in sorted order (ImageFolder's rule), or the sorted distinct labels of the CSV. A
deployed client reading its own folder must be given it (the server checks this before the run).

Sample ids: an image's path relative to its data-dir, or a CSV data row number (1 = the first
row after the header). Every error names the file, folder, column or label and what is allowed.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OWN_FORMATS = ("imagefolder", "csv-text")
IMAGE_CHANNELS = (1, 3)
IMAGE_AUGMENTS = ("none", "crop-flip")
TEXT_SPECIALS = ("<unk>", "<pad>", "<bos>", "<eos>")  # indices 0, 1, 2, 3, as AG News


class OwnDataError(ValueError):
    """A user's data or its description is not usable; the message names what and why."""


@dataclass(frozen=True)
class OwnDataSpec:
    """The run-config keys that describe a user's own data (hashable: keys the process cache)."""

    classes: str = ""
    classes_file: str = ""
    image_size: int = 32
    image_channels: int = 3
    text_column: str = "text"
    label_column: str = "label"
    vocab_file: str = ""
    test_dir: str = ""

    @classmethod
    def from_config(cls, config) -> OwnDataSpec:
        """Take the fields of a common.config.RunConfig that describe own data."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})

    def class_list(self) -> tuple[str, ...]:
        """The fixed class list, or () when neither `classes` nor `classes-file` is set.
        Raises OwnDataError for a missing or empty file, an empty name or a duplicate."""
        if self.classes and self.classes_file:
            raise OwnDataError("set classes or classes-file, not both")
        if self.classes_file:
            path = Path(self.classes_file).expanduser()
            if not path.is_file():
                raise OwnDataError(f"classes-file '{path}' does not exist")
            names = [
                line.strip()
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
            where = f"classes-file '{path}'"
        elif self.classes:
            names = [name.strip() for name in self.classes.split(",")]
            where = f"classes='{self.classes}'"
        else:
            return ()
        if any(not name for name in names):
            raise OwnDataError(f"{where}: a class name is empty")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise OwnDataError(f"{where}: class {repeated[0]!r} is listed twice")
        if len(names) < 2:
            raise OwnDataError(f"{where}: at least 2 classes are needed, got {len(names)}")
        return tuple(names)


# --- Image folders -------------------------------------------------------------------------------


def list_image_folder(
    root: str | Path, classes: Sequence[str] = ()
) -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """The images of an ImageFolder tree: (class list, paths relative to `root`, int64 labels).

    `classes` fixes the numbering; empty: the sorted class folders of `root`. A client need not
    hold every class, but a class folder not in the list, an empty class folder, or a tree with
    no image at all is refused (OwnDataError, naming the folder and the allowed classes).
    Hidden entries (names starting with ".") are skipped, as torchvision does.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    root = Path(root).expanduser()
    if not root.is_dir():
        raise OwnDataError(f"image folder '{root}' does not exist or is not a folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = tuple(classes) or tuple(folders)
    unknown = [name for name in folders if name not in classes]
    if unknown:
        raise OwnDataError(
            f"image folder '{root}' holds class folder {unknown[0]!r}, which is not in the class "
            f"list ({', '.join(classes)}); add it to classes / classes-file or remove the folder"
        )
    if not folders:
        raise OwnDataError(
            f"image folder '{root}' has no class folders; expected root/<class name>/<image> "
            "(torchvision's ImageFolder layout)"
        )
    present = {name: index for index, name in enumerate(classes) if name in folders}
    items = make_dataset(str(root), present, extensions=IMG_EXTENSIONS, allow_empty=True)
    counts = np.bincount([label for _, label in items], minlength=len(classes))
    empty = [name for name, index in present.items() if counts[index] == 0]
    if empty:
        raise OwnDataError(
            f"class folder '{root / empty[0]}' holds no image (allowed extensions: "
            f"{', '.join(IMG_EXTENSIONS)})"
        )
    paths = [Path(path).relative_to(root).as_posix() for path, _ in items]
    labels = np.asarray([label for _, label in items], dtype=np.int64)
    return classes, paths, labels


def load_images(root: str | Path, paths: Sequence[str], size: int, channels: int) -> np.ndarray:
    """Decode `paths` (relative to `root`) to uint8 ``[N, channels, size, size]``: PIL, converted
    to RGB (3) or grayscale "L" (1), resized with bilinear filtering. OwnDataError names a file
    that cannot be read as an image."""
    from PIL import Image, UnidentifiedImageError

    if channels not in IMAGE_CHANNELS:
        raise OwnDataError(f"image-channels={channels}: allowed {IMAGE_CHANNELS}")
    root = Path(root).expanduser()
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    mode = "RGB" if channels == 3 else "L"
    for i, relative in enumerate(paths):
        try:
            with Image.open(root / relative) as image:
                image = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise OwnDataError(f"image '{root / relative}' cannot be read: {err}") from None
        out[i] = pixels.transpose(2, 0, 1) if channels == 3 else pixels[None]
    return out


# --- CSV text ------------------------------------------------------------------------------------


def read_text_csv(
    path: str | Path, text_column: str, label_column: str
) -> tuple[list[str], list[str], list[str]]:
    """(texts, label names, sample ids = data row numbers from 1) of a CSV with a header row.
    OwnDataError for a missing file, a missing column (the columns found are named) or no row."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise OwnDataError(f"CSV file '{path}' does not exist")
    texts, labels, ids = [], [], []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in (text_column, label_column) if c not in columns]
            if missing:
                raise OwnDataError(
                    f"CSV file '{path}' has no column {missing[0]!r} (its columns: "
                    f"{', '.join(columns) or 'none'}); name the columns with text-column and "
                    "label-column"
                )
            for row_number, row in enumerate(reader, start=1):
                texts.append(row[text_column] or "")
                labels.append((row[label_column] or "").strip())
                ids.append(str(row_number))
    except UnicodeDecodeError as err:
        raise OwnDataError(f"CSV file '{path}' is not UTF-8 text: {err}") from None
    except csv.Error as err:
        raise OwnDataError(f"CSV file '{path}' cannot be parsed: {err}") from None
    if not texts:
        raise OwnDataError(f"CSV file '{path}' has no data rows")
    return texts, labels, ids


def label_indices(names: Sequence[str], classes: Sequence[str], where: str) -> np.ndarray:
    """int64 class indices of label `names`; OwnDataError naming the first label (and its row)
    that is not in `classes`."""
    index = {name: i for i, name in enumerate(classes)}
    out = np.empty(len(names), dtype=np.int64)
    for row, name in enumerate(names, start=1):
        if name not in index:
            raise OwnDataError(
                f"{where} data row {row} (after the header): label {name!r} is not in the "
                f"class list ({', '.join(classes)}); add it to classes / classes-file or fix "
                "the label"
            )
        out[row - 1] = index[name]
    return out


def read_vocab_file(path: str | Path) -> dict[str, int]:
    """A vocabulary file: one token per line, line k (from 0) = index k, the first four lines
    the specials <unk>, <pad>, <bos>, <eos>. OwnDataError when missing or malformed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise OwnDataError(
            f"vocab-file '{path}' does not exist: every node needs the same vocabulary file "
            "(write one with: python -m data.own_data vocab CSV... --out FILE)"
        )
    tokens = path.read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    if tuple(tokens[: len(TEXT_SPECIALS)]) != TEXT_SPECIALS:
        raise OwnDataError(
            f"vocab-file '{path}' must start with the lines {', '.join(TEXT_SPECIALS)}"
        )
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if token in vocab:
            raise OwnDataError(f"vocab-file '{path}' line {index + 1}: {token!r} repeats")
        vocab[token] = index
    return vocab


def write_vocab_file(path: str | Path, vocab: dict[str, int]) -> None:
    """Write `vocab` (token -> index 0..V-1) in read_vocab_file's format."""
    tokens = sorted(vocab, key=vocab.__getitem__)
    Path(path).write_text("".join(f"{token}\n" for token in tokens), encoding="utf-8")


DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_example(out: Path, noise_rate: float = 0.4, seed: int = 1) -> None:
    """Example own data to try the walkthrough (docs/own-data.md) with: scikit-learn's bundled
    digits as 8x8 grayscale PNGs, `client-0/` (clean), `client-1/` (a `noise_rate` fraction of
    its images put in a wrong class folder), `test/`, `classes.txt`, and `client-1-truth.csv`
    (each image's true class: what a real owner would not know)."""
    from PIL import Image

    from data.datasets import load_dataset

    digits = load_dataset("digits", None)
    rng = np.random.default_rng(seed)
    x, y = digits.train_inputs[:, 0], digits.train_labels
    half = len(y) // 2
    flip = rng.random(len(y) - half) < noise_rate
    shown = y.copy()
    shown[half:][flip] = (y[half:][flip] + rng.integers(1, 10, int(flip.sum()))) % 10
    parts = [("client-0", x[:half], shown[:half]), ("client-1", x[half:], shown[half:])]
    parts.append(("test", digits.test_inputs[:, 0], digits.test_labels))
    truth = []
    for folder, images, labels in parts:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            relative = f"{DIGIT_CLASSES[label]}/{i:04d}.png"
            (out / folder / DIGIT_CLASSES[label]).mkdir(parents=True, exist_ok=True)
            pixels = (image.astype(np.float64) * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(out / folder / relative)
            if folder == "client-1":
                truth.append((relative, DIGIT_CLASSES[y[half + i]]))
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in DIGIT_CLASSES))
    write_text_example(out / "text", noise_rate, seed)
    with open(out / "client-1-truth.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("sample_id", "true_label"), *truth])
    print(
        f"wrote {out}: client-0/ ({half} images), client-1/ ({len(y) - half} images, "
        f"{int(flip.sum())} in a wrong class folder), test/, classes.txt, client-1-truth.csv, "
        "text/ (a.csv, b.csv with wrong topics, test.csv, b-truth.csv)"
    )


EXAMPLE_TOPICS = {
    "sports": "goal match team league coach season score player cup win",
    "politics": "vote party election minister law senate policy campaign debate court",
    "science": "space research cell planet study data physics lab gene energy",
}


def write_text_example(out: Path, noise_rate: float, seed: int) -> None:
    """Synthetic short texts of three topics (columns review, topic): `a.csv` (clean), `b.csv`
    (a `noise_rate` fraction of its topics wrong), `test.csv`, `b-truth.csv`."""
    rng = np.random.default_rng(seed + 1)
    topics = list(EXAMPLE_TOPICS)
    filler = "the a of and to in on with for new today week report says".split()

    def rows(n: int) -> tuple[list[str], np.ndarray]:
        labels = rng.integers(0, len(topics), n)
        texts = [
            " ".join(
                rng.permutation(
                    [*rng.choice(EXAMPLE_TOPICS[topics[y]].split(), 5), *rng.choice(filler, 4)]
                )
            )  # fmt: skip
            for y in labels
        ]
        return texts, labels

    out.mkdir(parents=True, exist_ok=True)
    (a, ya), (b, yb), (t, yt) = rows(300), rows(300), rows(150)
    flip = rng.random(len(yb)) < noise_rate
    shown = yb.copy()
    shown[flip] = (yb[flip] + rng.integers(1, len(topics), int(flip.sum()))) % len(topics)
    for name, texts, labels in (("a", a, ya), ("b", b, shown), ("test", t, yt)):
        with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(("review", "topic"))
            writer.writerows((text, topics[y]) for text, y in zip(texts, labels, strict=True))
    with open(out / "b-truth.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("sample_id", "true_label"))
        writer.writerows((str(row), topics[y]) for row, y in enumerate(yb, start=1))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m data.own_data vocab TRAIN.csv... --out vocab.txt`: the vocabulary file a
    deployed csv-text federation ships to every node (built as simulation builds it).
    `python -m data.own_data example OUT_DIR`: example image folders (see write_example)."""
    from data.datasets import basic_english_tokenize, build_vocab

    parser = argparse.ArgumentParser(prog="python -m data.own_data", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    vocab = sub.add_parser("vocab", help="build a vocabulary file from CSV files")
    vocab.add_argument("csv", nargs="+", type=Path)
    vocab.add_argument("--text-column", default="text")
    vocab.add_argument("--label-column", default="label")
    vocab.add_argument("--out", type=Path, required=True)
    example = sub.add_parser("example", help="write example image folders of two clients")
    example.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "example":
        if args.out.exists() and any(args.out.iterdir()):
            print(f"error: {args.out} is not empty", file=sys.stderr)
            return 2
        write_example(args.out)
        return 0
    try:
        texts = []
        for path in args.csv:
            texts += read_text_csv(path, args.text_column, args.label_column)[0]
    except OwnDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    words = build_vocab(basic_english_tokenize(text) for text in texts)
    write_vocab_file(args.out, words)
    print(f"wrote {args.out}: {len(words)} tokens from {len(texts)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
