"""Users' own data (data.own_data and its loaders in data.datasets): the class list, image
folders, CSV text, the vocabulary file, and every bad input refused with a message naming it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data.datasets import DatasetNotFoundError, load_dataset, load_own_training_data
from data.federation import DataSettings, build_federation, own_data_federation
from data.own_data import (
    OwnDataError,
    OwnDataSpec,
    label_indices,
    list_image_folder,
    load_images,
    main,
    read_text_csv,
    read_vocab_file,
)
from fakedata import DIGIT_NAMES, write_image_folder, write_text_csv

IMAGES = np.arange(6 * 64, dtype=np.uint8).reshape(6, 8, 8) % 17
LABELS = np.array([0, 1, 2, 0, 1, 2])
DIGITS = ",".join(DIGIT_NAMES)


def image_spec(**keys) -> OwnDataSpec:
    return OwnDataSpec(**{"image_size": 8, "image_channels": 1, **keys})


def test_the_class_list_fixes_the_numbering_whatever_classes_a_client_holds(tmp_path):
    write_image_folder(tmp_path, IMAGES[:2], np.array([2, 2]))  # holds only "two"
    classes, paths, labels = list_image_folder(tmp_path, DIGIT_NAMES)
    assert classes == DIGIT_NAMES and labels.tolist() == [2, 2]
    assert paths == ["two/img-00000.png", "two/img-00001.png"]
    # without a list: the sorted class folders (torchvision ImageFolder's rule)
    assert list_image_folder(tmp_path)[0] == ("two",)


def test_images_of_any_size_and_mode_are_resized_and_converted(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "a" / "x.jpg")
    Image.new("L", (5, 7), 77).save(tmp_path / "b" / "y.png")
    _, paths, labels = list_image_folder(tmp_path, ("a", "b"))
    rgb = load_images(tmp_path, paths, 16, 3)
    gray = load_images(tmp_path, paths, 16, 1)
    assert rgb.shape == (2, 3, 16, 16) and gray.shape == (2, 1, 16, 16)
    assert rgb.dtype == np.uint8 and abs(int(rgb[0, 0].mean()) - 200) <= 2
    assert int(rgb[1, 0, 0, 0]) == 77 and labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: (root / "seven").mkdir(), "class folder '{root}/seven' holds no image"),
        (lambda root: (root / "cats").mkdir(), "holds class folder 'cats', which is not in"),
        (
            lambda root: (root / "one" / "broken.png").write_bytes(b"not a png"),
            "image '{root}/one/broken.png' cannot be read",
        ),
    ],
    ids=["empty class folder", "class not in the list", "unreadable image"],
)
def test_a_bad_image_folder_is_refused_naming_what_is_wrong(tmp_path, make, message):
    write_image_folder(tmp_path, IMAGES, LABELS)
    make(tmp_path)
    with pytest.raises(OwnDataError, match=None) as caught:
        load_dataset("imagefolder", tmp_path, own=image_spec(classes=DIGITS))
    assert message.format(root=tmp_path) in str(caught.value)


def test_class_lists_are_checked(tmp_path):
    for bad, message in [
        ("a,a", "class 'a' is listed twice"),
        ("a,,b", "a class name is empty"),
        ("a", "at least 2 classes"),
    ]:
        with pytest.raises(OwnDataError, match=message):
            OwnDataSpec(classes=bad).class_list()
    (tmp_path / "classes.txt").write_text("# names\ncat\n\ndog\n")
    assert OwnDataSpec(classes_file=str(tmp_path / "classes.txt")).class_list() == ("cat", "dog")
    with pytest.raises(OwnDataError, match="does not exist"):
        OwnDataSpec(classes_file=str(tmp_path / "none.txt")).class_list()


def test_a_csv_is_read_by_its_named_columns_and_bad_ones_are_named(tmp_path):
    write_text_csv(tmp_path / "t.csv", ["Goal!", "Stocks up", "New gene"], [0, 1, 2])
    texts, names, ids = read_text_csv(tmp_path / "t.csv", "review", "topic")
    assert texts == ["Goal!", "Stocks up", "New gene"] and ids == ["1", "2", "3"]
    assert names == ["sport", "money", "science"]
    with pytest.raises(OwnDataError, match="has no column 'text' .*its columns: review, topic"):
        read_text_csv(tmp_path / "t.csv", "text", "topic")
    with pytest.raises(
        OwnDataError, match="data row 2 .after the header.: label 'money' is not in the class list"
    ):
        label_indices(names, ("sport", "science"), "t.csv")


def test_csv_text_builds_its_vocabulary_or_reads_the_shared_file(tmp_path):
    write_text_csv(tmp_path / "train.csv", ["goal goal match", "bank rate"], [0, 1])
    spec = OwnDataSpec(text_column="review", label_column="topic", classes="sport,money")
    built = load_dataset("csv-text", tmp_path, own=spec)
    assert built.class_names == ("sport", "money") and built.train_labels.tolist() == [0, 1]
    assert built.vocab_size == 4 + 4 and built.train_sample_ids.tolist() == ["1", "2"]
    assert main(["vocab", str(tmp_path / "train.csv"), "--text-column", "review",
                 "--label-column", "topic", "--out", str(tmp_path / "vocab.txt")]) == 0  # fmt: skip
    assert read_vocab_file(tmp_path / "vocab.txt")["goal"] == 4
    shared = OwnDataSpec(**{**spec.__dict__, "vocab_file": str(tmp_path / "vocab.txt")})
    own = load_own_training_data("csv-text", tmp_path / "train.csv", own=shared)
    assert np.array_equal(own.train_inputs, built.train_inputs)
    with pytest.raises(OwnDataError, match="needs vocab-file"):
        load_own_training_data("csv-text", tmp_path / "train.csv", own=spec)
    with pytest.raises(OwnDataError, match="vocab-file '.*missing.txt' does not exist"):
        read_vocab_file(tmp_path / "missing.txt")


def test_a_client_with_its_own_folder_needs_the_class_list(tmp_path):
    write_image_folder(tmp_path, IMAGES, LABELS)
    with pytest.raises(OwnDataError, match="needs the federation's class list"):
        load_own_training_data("imagefolder", tmp_path, own=image_spec())
    own = load_own_training_data("imagefolder", tmp_path, own=image_spec(classes=DIGITS))
    assert own.num_classes == 10 and own.test_labels.size == 0 and len(own.train_labels) == 6
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        load_dataset("imagefolder", tmp_path / "nope", own=image_spec(classes=DIGITS))


def settings(noise_type: str, **keys) -> DataSettings:
    return DataSettings(
        dataset="imagefolder", data_dir="", download=False, cifar10n_labels="worse",
        partition="iid", dirichlet_alpha=1.0, dirichlet_min_size=1, shards_per_client=1,
        noise_type=noise_type, noise_rate="0.5", noise_groups="", seed=1,
        own=image_spec(classes=DIGITS, **keys),
    )  # fmt: skip


def test_own_labels_are_not_taken_as_the_truth_unless_synthetic_noise_is_added(tmp_path):
    write_image_folder(tmp_path, IMAGES, LABELS)
    dataset = load_dataset("imagefolder", tmp_path, own=image_spec(classes=DIGITS))
    blind = build_federation(settings("none"), 2, dataset)
    assert (blind.clean_labels == -1).all() and np.isnan(blind.noise_rates).all()
    noisy = build_federation(settings("symmetric"), 2, dataset)
    assert np.array_equal(noisy.clean_labels, dataset.train_labels)
    assert not np.isnan(noisy.noise_rates).any()
    own = own_data_federation(settings("none"), 3, 1, dataset)
    assert (own.clean_labels == -1).all() and np.isnan(own.noise_rates[1])


def test_the_example_folders_of_the_walkthrough_load_and_carry_the_promised_noise(tmp_path):
    import csv

    assert main(["example", str(tmp_path / "ex")]) == 0
    spec = image_spec(classes_file=str(tmp_path / "ex" / "classes.txt"))
    client = load_own_training_data("imagefolder", tmp_path / "ex" / "client-1", own=spec)
    truth = dict(list(csv.reader(open(tmp_path / "ex" / "client-1-truth.csv")))[1:])
    observed = {
        path: spec.class_list()[label]
        for path, label in zip(client.train_sample_ids, client.train_labels, strict=True)
    }
    assert observed.keys() == truth.keys()
    wrong = np.mean([observed[p] != truth[p] for p in truth])
    assert 0.35 < wrong < 0.45
    assert main(["example", str(tmp_path / "ex")]) == 2  # never writes into a non-empty folder
