"""Every preset in configs/ passes the pre-flight (config, data files loaded, the federation of
the size it states, every client big enough, the model fits), on generated data in each
dataset's official layout, so that a preset can never go stale."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import simulation
from fakedata import write_csv, write_fake_cifar, write_fake_human

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "configs").glob("*.toml"))
# method variants: a few keys, layered over a preset with a second --config
VARIANTS = sorted((ROOT / "configs" / "variants").glob("*.toml"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Room for 100 Dirichlet clients of at least 100 samples (AG News: half the real size)."""
    cifar = tmp_path_factory.mktemp("cifar10")
    _, y_train, _, _ = write_fake_cifar(cifar, per_batch=5000)
    write_fake_human(cifar / "CIFAR-10_human.pt", y_train)
    agnews = tmp_path_factory.mktemp("agnews")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    rows = [
        [str(rng.integers(1, 5)), " ".join(rng.choice(words, 3)), " ".join(rng.choice(words, 8))]
        for _ in range(60_000)
    ]
    write_csv(agnews / "train.csv", rows)
    write_csv(agnews / "test.csv", rows[:100])
    clothing = tmp_path_factory.mktemp("clothing1m")
    (clothing / "images").mkdir()  # images are decoded lazily: the keys are enough here
    keys = [f"images/{i % 10}/img{i}.jpg" for i in range(7_000)]
    (clothing / "noisy_label_kv.txt").write_text(
        "".join(f"{k} {i % 14}\n" for i, k in enumerate(keys))
    )
    (clothing / "clean_label_kv.txt").write_text(
        "".join(f"{k} {i % 14}\n" for i, k in enumerate(keys[:20]))
    )
    (clothing / "noisy_train_key_list.txt").write_text("\n".join(keys[20:]) + "\n")
    (clothing / "clean_test_key_list.txt").write_text("\n".join(keys[:20]) + "\n")
    torch.save(torchvision.models.resnet50().state_dict(), clothing / "resnet50-11ad3fa6.pth")
    return {
        "cifar10": cifar, "cifar10n": cifar, "agnews": agnews, "clothing1m": clothing,
        "digits": "",  # embedded in scikit-learn
    }  # fmt: skip


def test_there_is_a_preset_for_every_experiment_of_the_paper_that_has_data_here():
    names = {path.stem for path in PRESETS}
    for noise in ("", "-pairflip", "-mixed"):
        assert {f"paper-cifar10{noise}-lenet", f"paper-cifar10{noise}-resnet18"} <= names
    assert {"paper-cifar10n-lenet", "paper-cifar10n-resnet18"} <= names
    assert {"paper-agnews-fasttext", "paper-agnews-mini-fasttext"} <= names
    assert "paper-clothing1m-resnet50" in names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_every_preset_passes_the_preflight_with_the_federation_it_states(
    capsys, tmp_path, data, preset
):
    values = tomllib.loads(preset.read_text())
    stated = values["federation"]["num-clients"]
    argv = ["--check", "--config", str(preset), "--set", f"data-dir='{data[values['dataset']]}'",
            "--set", f"out-dir='{tmp_path}'"]  # fmt: skip
    if values.get("device") == "cuda" and not torch.cuda.is_available():
        argv += ["--set", "device='cpu'"]  # a GPU preset, checked on this CPU machine
    code = simulation.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"of {stated} clients can start" in out


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda path: path.stem)
@pytest.mark.parametrize("preset", ["paper-cifar10-lenet", "paper-agnews-mini-fasttext"])
def test_every_variant_layers_over_a_preset(capsys, tmp_path, data, variant, preset):
    path = ROOT / "configs" / f"{preset}.toml"
    values = tomllib.loads(path.read_text())
    dataset, clients = values["dataset"], values["federation"]["num-clients"]
    argv = ["--check", "--config", str(path), "--config", str(variant),
            "--set", f"data-dir='{data[dataset]}'", "--set", f"out-dir='{tmp_path}'"]  # fmt: skip
    assert simulation.main(argv) == 0, capsys.readouterr().err
    assert f"of {clients} clients can start" in capsys.readouterr().out
    assert "federation" not in tomllib.loads(variant.read_text())  # the preset states it


def test_the_stated_federation_size_is_the_default_and_a_bad_table_is_refused(capsys, tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("strategy = 'fedavg'\nnum-rounds = 2\n\n[federation]\nnum-clients = 4\n")
    base = ["--check", "--config", str(preset), "--set", f"out-dir='{tmp_path}'"]
    assert simulation.main(base) == 0
    assert "of 4 clients can start" in capsys.readouterr().out
    assert simulation.main([*base, "--num-clients", "3"]) == 0
    out, err = capsys.readouterr()
    assert "of 3 clients can start" in out and "made for 4 clients; running 3" in err
    for table in ("[federation]\nnum-clients = 0\n", "[federation]\nnodes = 4\n", "[other]\n"):
        preset.write_text(f"num-rounds = 2\n\n{table}")
        assert simulation.main(base) == 2
        assert "[federation] table" in capsys.readouterr().err


def test_without_the_pretrained_weights_the_run_stops_before_it_starts(capsys, tmp_path, data):
    argv = ["--check", "--config", str(ROOT / "configs" / "paper-clothing1m-resnet50.toml"),
            "--set", f"data-dir='{data['clothing1m']}'", "--set", f"out-dir='{tmp_path}'",
            "--set", "device='cpu'", "--set", "pretrained-weights='elsewhere.pth'"]  # fmt: skip
    assert simulation.main(argv) == 2
    err = capsys.readouterr().err
    assert "pretrained-weights: no file" in err and "--set pretrained-weights=''" in err
    assert simulation.main([*argv[:-2], "--set", "pretrained-weights=''"]) == 0
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    assert simulation.main([*argv[:-2], "--set", f"pretrained-weights='{bad}'"]) == 2
    assert "does not fit torchvision's ResNet-50" in capsys.readouterr().err
    assert simulation.main([*argv[:-2], "--set", "model=lenet"]) == 2
    assert "pretrained-weights is for model = resnet50" in capsys.readouterr().err


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_no_preset_sets_a_key_that_another_strategy_refuses(preset):
    """Keys of other strategies are checked too (a bad one is refused even where the chosen
    strategy ignores it), so a preset's own values must pass every strategy's checks."""
    from common.config import RunConfig, app_defaults
    from strategies.registry import keys_of_other_strategies_problems

    values = tomllib.loads(preset.read_text())
    clients = values.pop("federation")["num-clients"]
    config = RunConfig.from_mapping({**app_defaults(), **values, "strategy": "fedavg"})
    context = dict(
        sampled=config.clients_sampled(clients), num_clients=clients, num_rounds=config.num_rounds
    )
    assert keys_of_other_strategies_problems(config, context) == []


def test_a_bad_key_of_another_strategy_is_refused():
    from common.config import ConfigError, config_with
    from strategies.registry import check_strategy_settings

    with pytest.raises(ConfigError, match="fedrn-neighbours=-1 .*a key of fedrn, which"):
        check_strategy_settings(config_with(strategy="fedavg", fedrn_neighbours=-1), 10)
    check_strategy_settings(config_with(strategy="fedavg", fedrn_neighbours=3), 10)
    # every strategy that reads the key is named
    readers = "dividemix, feddiv, fedrn"
    with pytest.raises(ConfigError, match=rf"p-threshold=1.0 .*a key of {readers}, which"):
        check_strategy_settings(config_with(strategy="coteaching", p_threshold=1.0), 10)


def test_every_problem_of_a_strategy_s_own_keys_is_named():
    """A strategy's check stops at its first problem; the pre-flight names them all, the
    warm-up that does not fit the run included."""
    from common.config import ConfigError, config_with
    from strategies.registry import check_strategy_settings

    config = config_with(
        strategy="feddiv", num_rounds=5, p_threshold=1.5, feddiv_xi=-1.0, feddiv_momentum=1.0
    )
    with pytest.raises(ConfigError) as refused:
        check_strategy_settings(config, 10)
    assert refused.value.problems == [
        "strategy='feddiv': " + problem
        for problem in (
            "baseline-warmup-rounds=20 is not allowed with num-rounds=5: the method's later "
            "stage would never run (round 21 would be its first); lower it below 5, or raise "
            "num-rounds above 20",
            "p-threshold=1.5 must be in [0, 1)",
            "feddiv-xi=-1.0 must be >= 0",
            "feddiv-momentum=1.0 must be in [0, 1)",
        )
    ]


def test_a_short_run_still_checks_another_strategys_key():
    """A default warm-up (30 rounds) longer than the run must not hide a changed key's error:
    20 rounds of co-teaching with fedrn-alpha=1.5 was let through, 60 rounds refused it."""
    from common.config import ConfigError, config_with
    from strategies.registry import check_strategy_settings

    for rounds in (20, 60):
        config = config_with(strategy="coteaching", num_rounds=rounds, fedrn_alpha=1.5)
        with pytest.raises(ConfigError, match=r"fedrn-alpha=1.5 must be in \[0, 1\]"):
            check_strategy_settings(config, 10)
    # a warm-up that does not fit the run is the business of a strategy that reads it
    check_strategy_settings(config_with(strategy="fedavg", num_rounds=20, fedrn_alpha=0.5), 10)
