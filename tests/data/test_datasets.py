"""Tests for data/datasets.py on tiny on-disk fixtures in the official layouts (no network)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data.datasets as datasets_module
from data.datasets import (
    CIFAR10N_LABEL_KEYS,
    DATASET_NAMES,
    DatasetNotFoundError,
    ImageFiles,
    basic_english_tokenize,
    build_vocab,
    check_data_files,
    load_dataset,
    load_own_training_data,
)
from fakedata import (
    AGNEWS_TEST,
    AGNEWS_TRAIN,
    CIFAR_NAMES,
    write_csv,
    write_fake_cifar,
    write_fake_human,
    write_own_cifar,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
REAL_CIFAR10N = SHARED / "datasets" / "cifar10n" / "CIFAR-10_human.pt"

# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def cifar(tmp_path):
    arrays = write_fake_cifar(tmp_path)
    return tmp_path, arrays


@pytest.fixture
def agnews_dir(tmp_path):
    write_csv(tmp_path / "train.csv", AGNEWS_TRAIN)
    write_csv(tmp_path / "test.csv", AGNEWS_TEST)
    return tmp_path


@pytest.fixture
def clothing_dir(tmp_path):
    """4 tiny JPEGs (different sizes, one grayscale); 3 train keys, 2 test keys."""
    keys = [f"images/{i}/ab/img{i}.jpg" for i in range(4)]
    sizes = [(10, 12), (30, 20), (8, 8), (16, 16)]
    for i, (key, size) in enumerate(zip(keys, sizes, strict=True)):
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        mode = "L" if i == 2 else "RGB"
        color = 200 if mode == "L" else (255, 0, 0)
        Image.new(mode, size, color).save(tmp_path / key, quality=95)
    (tmp_path / "noisy_label_kv.txt").write_text(
        f"{keys[0]} 3\n{keys[1]} 5\n{keys[2]} 13\n{keys[3]} 0\n"
    )
    (tmp_path / "clean_label_kv.txt").write_text(f"{keys[1]} 4\n{keys[3]} 7\n")
    (tmp_path / "noisy_train_key_list.txt").write_text("\n".join(keys[:3]) + "\n")
    (tmp_path / "clean_test_key_list.txt").write_text(f"{keys[3]}\n{keys[1]}\n")
    return tmp_path


# --- name / file checks ------------------------------------------------------------------------


def test_unknown_dataset_name_lists_allowed():
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", None)
    for name in ("mnist", *DATASET_NAMES):
        assert name in str(err.value)


def test_unknown_cifar10n_key_lists_allowed(cifar):
    root, _ = cifar
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10n", root, cifar10n_labels="worst")
    for key in ("worst", *CIFAR10N_LABEL_KEYS):
        assert key in str(err.value)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]),
        ("cifar10n", ["data_batch_1", "test_batch", "batches.meta", "CIFAR-10_human.pt"]),
        ("agnews", ["train.csv", "test.csv"]),
        ("clothing1m", ["images", "noisy_label_kv.txt", "clean_test_key_list.txt"]),
    ],
)
def test_empty_dir_names_expected_files(tmp_path, name, expected):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name, tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    for fname in expected:
        assert fname in message
    assert isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize("data_dir", [None, ""])
def test_missing_data_dir(data_dir):
    with pytest.raises(DatasetNotFoundError, match="train.csv"):
        check_data_files("agnews", data_dir)


def test_nonexistent_dir(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data_batch_1"):
        check_data_files("cifar10", tmp_path / "nope")


def test_cifar10n_missing_label_file(cifar):
    root, _ = cifar
    check_data_files("cifar10", root)  # images alone are enough for cifar10
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10_human.pt"):
        check_data_files("cifar10n", root)
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10_human.pt"):
        check_data_files("cifar10n", root, download=True)  # the label file cannot be downloaded


def test_partial_cifar_names_only_missing(cifar):
    root, _ = cifar
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        check_data_files("cifar10", root)
    assert "missing " + str(root / "cifar-10-batches-py" / "data_batch_3") in str(err.value)


# --- digits -------------------------------------------------------------------------------------


def test_digits_split():
    ds = load_dataset("digits", None)
    assert ds.train_inputs.shape == (1437, 1, 8, 8) and ds.test_inputs.shape == (360, 1, 8, 8)
    assert ds.train_inputs.dtype == np.uint8 and ds.train_inputs.max() == 16
    assert ds.train_labels.dtype == np.int64 and ds.test_labels.dtype == np.int64
    assert ds.input_shape == (1, 8, 8) and ds.input_kind == "image"
    assert ds.class_names == tuple(str(i) for i in range(10))
    np.testing.assert_array_equal(ds.train_clean_labels, ds.train_labels)
    assert ds.train_human_labels is None
    # stratified: per-class test counts are 20 % of the class size, rounded
    total = np.bincount(ds.train_labels, minlength=10) + np.bincount(ds.test_labels, minlength=10)
    test_counts = np.bincount(ds.test_labels, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * total) <= 1)
    # fixed split: loading again gives the same arrays
    again = load_dataset("digits", "/ignored")
    np.testing.assert_array_equal(again.train_inputs, ds.train_inputs)


# --- CIFAR-10 / CIFAR-10-N ---------------------------------------------------------------------


def test_cifar10_reads_pickles(cifar):
    root, (x_tr, y_tr, x_te, y_te) = cifar
    ds = load_dataset("cifar10", root)
    assert ds.train_inputs.shape == (15, 3, 32, 32) and ds.train_inputs.dtype == np.uint8
    assert ds.test_inputs.shape == (4, 3, 32, 32)
    # row layout: 1024 R, 1024 G, 1024 B, each row-major 32x32
    assert ds.train_inputs[0, 1, 0, 0] == x_tr[0, 1024]
    assert ds.train_inputs[7, 2, 1, 3] == x_tr[7, 2048 + 32 + 3]
    np.testing.assert_array_equal(ds.train_inputs.reshape(15, -1), x_tr)
    np.testing.assert_array_equal(ds.test_inputs.reshape(4, -1), x_te)
    np.testing.assert_array_equal(ds.train_labels, y_tr)
    np.testing.assert_array_equal(ds.train_clean_labels, y_tr)
    np.testing.assert_array_equal(ds.test_labels, y_te)
    assert ds.train_labels.dtype == np.int64 and ds.test_labels.dtype == np.int64
    assert ds.class_names == tuple(CIFAR_NAMES) and ds.num_classes == 10
    assert ds.input_shape == (3, 32, 32) and ds.train_human_labels is None


def test_cifar10_accepts_batches_folder_itself(cifar):
    root, (x_tr, _, _, _) = cifar
    ds = load_dataset("cifar10", root / "cifar-10-batches-py")
    np.testing.assert_array_equal(ds.train_inputs.reshape(15, -1), x_tr)


@pytest.mark.parametrize("inside", [False, True])
@pytest.mark.parametrize("key", ["worse", "aggre", "random2"])
def test_cifar10n(cifar, key, inside):
    root, (x_tr, y_tr, _, _) = cifar
    folder = root / "cifar-10-batches-py" if inside else root
    labels = write_fake_human(folder / "CIFAR-10_human.pt", y_tr)
    ds = load_dataset("cifar10n", root, cifar10n_labels=key)
    assert ds.name == "cifar10n"
    np.testing.assert_array_equal(ds.train_labels, y_tr)  # partition on the clean labels
    np.testing.assert_array_equal(ds.train_clean_labels, y_tr)
    np.testing.assert_array_equal(ds.train_human_labels, labels[CIFAR10N_LABEL_KEYS[key]])
    assert ds.train_human_labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train_inputs.reshape(15, -1), x_tr)


def test_cifar10n_default_key_is_worse(cifar):
    root, (_, y_tr, _, _) = cifar
    labels = write_fake_human(root / "CIFAR-10_human.pt", y_tr)
    ds = load_dataset("cifar10n", root)
    np.testing.assert_array_equal(ds.train_human_labels, labels["worse_label"])


def test_cifar10n_mismatching_clean_label_raises(cifar):
    root, (_, y_tr, _, _) = cifar
    wrong = y_tr.copy()
    wrong[2] = (wrong[2] + 1) % 10
    write_fake_human(root / "CIFAR-10_human.pt", wrong)
    with pytest.raises(ValueError, match="1 positions differ"):
        load_dataset("cifar10n", root)
    write_fake_human(root / "CIFAR-10_human.pt", np.concatenate([y_tr, y_tr]))
    with pytest.raises(ValueError, match="clean_label"):
        load_dataset("cifar10n", root)


@pytest.mark.skipif(not REAL_CIFAR10N.is_file(), reason="shared CIFAR-10_human.pt not present")
def test_real_cifar10n_label_file(tmp_path, monkeypatch):
    """The official label file loads through load_dataset and its noise rates are the published
    ones. The CIFAR-10 pickles are replaced by blank images carrying the file's clean labels (in
    the official order, whose first labels are known), so no 150 MB fixture has to be written."""
    clean = torch.load(REAL_CIFAR10N, weights_only=False)["clean_label"]
    np.testing.assert_array_equal(clean[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / fname).touch()  # presence only: the reader is replaced below
    blank = np.broadcast_to(np.zeros((1, 3, 32, 32), np.uint8), (50000, 3, 32, 32))
    fake = (blank, clean.astype(np.int64), blank[:2], np.array([0, 1]), tuple(CIFAR_NAMES))
    monkeypatch.setattr(datasets_module, "_read_cifar10", lambda *args, **kwargs: fake)
    (tmp_path / "CIFAR-10_human.pt").symlink_to(REAL_CIFAR10N)
    rates = {"worse": 40.21, "aggre": 9.01, "random1": 17.23, "random2": 18.12, "random3": 17.64}
    for key, rate in rates.items():
        ds = load_dataset("cifar10n", tmp_path, cifar10n_labels=key)
        assert ds.train_human_labels.shape == (50000,)
        assert round(100 * float(np.mean(ds.train_human_labels != ds.train_labels)), 2) == rate


# --- AG News ------------------------------------------------------------------------------------


def test_basic_english_tokenizer():
    text = 'Wall St. Bears Claw Back (Reuters) it\'s "fine"; really: yes!<br />No?'
    assert basic_english_tokenize(text) == [
        "wall", "st", ".", "bears", "claw", "back", "(", "reuters", ")", "it", "'", "s",
        "fine", "really", "yes", "!", "no", "?",
    ]  # fmt: skip


def test_build_vocab_order():
    vocab = build_vocab([["b", "a", "c", "a"], ["c", "d", "<unk>"]])
    assert list(vocab) == ["<unk>", "<pad>", "<bos>", "<eos>", "a", "c", "b", "d"]
    assert list(vocab.values()) == list(range(8))


def test_agnews(agnews_dir):
    ds = load_dataset("agnews", agnews_dir)
    assert ds.input_kind == "text" and ds.input_shape is None and ds.pad_index == 1
    assert ds.class_names == ("World", "Sports", "Business", "Sci/Tech") and ds.num_classes == 4
    np.testing.assert_array_equal(ds.train_labels, [2, 0, 1, 3, 1, 0])
    np.testing.assert_array_equal(ds.test_labels, [3, 2])
    assert ds.train_inputs.dtype == np.int64 and ds.test_inputs.dtype == np.int64
    tokens = [basic_english_tokenize(r[1] + " " + r[2]) for r in AGNEWS_TRAIN]
    lengths = [max(len(t), 1) for t in tokens]
    assert ds.train_inputs.shape == (6, max(lengths))
    vocab = build_vocab(tokens)
    assert ds.vocab_size == len(vocab) and len(vocab) == 4 + len({t for s in tokens for t in s})
    assert vocab["cup"] == 4  # the most frequent token (4 times) comes right after the specials
    for row, toks, n in zip(ds.train_inputs, tokens, lengths, strict=True):
        np.testing.assert_array_equal(row[: len(toks)], [vocab[t] for t in toks])
        assert np.all(row[n:] == 1)  # right-padded with <pad>
    # the empty text becomes a single <unk>
    assert ds.train_inputs[5, 0] == 0 and np.all(ds.train_inputs[5, 1:] == 1)
    assert ds.train_inputs.max() < ds.vocab_size and ds.train_inputs.min() >= 0
    # test split: train vocabulary, unseen tokens -> <unk>, padded to the test split's own Lmax
    assert ds.test_inputs.shape == (2, 5)
    expected0 = [vocab["quantum"] if "quantum" in vocab else 0, vocab["chip"], 0, 0, 0]
    np.testing.assert_array_equal(ds.test_inputs[0], expected0)
    np.testing.assert_array_equal(ds.test_inputs[1], [vocab["wall"], vocab["street"], 1, 1, 1])


def test_agnews_bad_row(agnews_dir):
    write_csv(agnews_dir / "train.csv", [["5", "x", "y"]])
    with pytest.raises(ValueError, match="class 1..4"):
        load_dataset("agnews", agnews_dir)


# --- Clothing1M ---------------------------------------------------------------------------------


def test_clothing1m(clothing_dir):
    ds = load_dataset("clothing1m", clothing_dir)
    assert ds.num_classes == 14 and ds.input_shape == (3, 224, 224)
    assert ds.class_names == tuple(str(i) for i in range(14))
    np.testing.assert_array_equal(ds.train_labels, [3, 5, 13])
    np.testing.assert_array_equal(ds.train_human_labels, [3, 5, 13])
    np.testing.assert_array_equal(ds.train_clean_labels, [-1, 4, -1])
    np.testing.assert_array_equal(ds.test_labels, [7, 4])
    assert isinstance(ds.train_inputs, ImageFiles) and len(ds.train_inputs) == 3
    assert len(ds.test_inputs) == 2 and ds.train_inputs.shape == (3, 3, 224, 224)
    batch = ds.train_inputs[np.array([2, 0])]
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.uint8
    assert np.all(np.abs(batch[0].astype(int) - 200) <= 2)  # grayscale -> RGB, all channels
    red = batch[1].reshape(3, -1).mean(axis=1)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    assert ds.train_inputs[1:3].shape == (2, 3, 224, 224)
    assert ds.test_inputs[0].shape == (3, 224, 224)
    assert ds.train_inputs[[]].shape == (0, 3, 224, 224)


def test_clothing1m_category_names(clothing_dir):
    names = [f"class{i}" for i in range(14)]
    (clothing_dir / "category_names_eng.txt").write_text("\n".join(names) + "\n")
    assert load_dataset("clothing1m", clothing_dir).class_names == tuple(names)


def test_clothing1m_missing_label(clothing_dir):
    (clothing_dir / "clean_label_kv.txt").write_text("")
    with pytest.raises(ValueError, match="clean_label_kv.txt"):
        load_dataset("clothing1m", clothing_dir)


# --- one client's own data (a SuperNode's data-dir) --------------------------------------------


def test_own_data_reads_the_batches_that_are_there(tmp_path):
    x, y = write_own_cifar(tmp_path)
    own = load_own_training_data("cifar10", tmp_path)
    np.testing.assert_array_equal(own.train_inputs, x)
    np.testing.assert_array_equal(own.train_labels, y)
    np.testing.assert_array_equal(own.train_clean_labels, y)
    assert own.class_names == tuple(CIFAR_NAMES) and len(own.test_labels) == 0
    # the batches folder itself works too
    assert (
        len(load_own_training_data("cifar10", tmp_path / "cifar-10-batches-py").train_labels) == 7
    )


def test_own_cifar10n_data_takes_the_human_labels_of_its_images(tmp_path):
    _, y = write_own_cifar(tmp_path)
    labels = write_fake_human(tmp_path / "CIFAR-10_human.pt", y)
    own = load_own_training_data("cifar10n", tmp_path, cifar10n_labels="aggre")
    np.testing.assert_array_equal(own.train_human_labels, labels["aggre_label"])
    write_fake_human(tmp_path / "CIFAR-10_human.pt", y[::-1].copy())
    with pytest.raises(ValueError, match="wrong label file or wrong image order"):
        load_own_training_data("cifar10n", tmp_path)


def test_own_data_names_what_is_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_own_training_data("cifar10", tmp_path / "nowhere")
    assert "batches.meta" in str(err.value) and "data_batch_*" in str(err.value)
    assert str(tmp_path / "nowhere") in str(err.value)
    write_own_cifar(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10_human.pt"):
        load_own_training_data("cifar10n", tmp_path)


@pytest.mark.parametrize("name", ["digits", "agnews"])
def test_own_data_is_refused_where_a_split_cannot_work(tmp_path, name):
    with pytest.raises(ValueError, match=f"dataset '{name}' cannot be read from a client's own"):
        load_own_training_data(name, tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_own_training_data("mnist", tmp_path)
