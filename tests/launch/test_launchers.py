"""The launchers' contract with the user, through their `main` in this process (no Flower
runtime): every argument takes effect or is refused with exit 2 and one message naming it,
the pre-flight finds what would fail later, a diverged run says so, and every command that the
README and docs show passes the pre-flight as written.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import deploy_local
import simulation
from fakedata import write_csv, write_fake_cifar, write_fake_human
from launch.overrides import parse_overrides
from launch.preflight import resolve_run_config
from launch.superlink import flower_environment

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def keep_sigterm():
    """main() installs a SIGTERM handler; give pytest its own back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def run_main(capsys, *argv: str, module=simulation) -> tuple[int, str, str]:
    code = module.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- 1. nothing the user typed is dropped ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "configs/paper-cifar10-lenet"], "did you mean configs/paper-cifar10-lenet"),
        (["--config", "configs/none.toml"], "'configs/none.toml': no such preset file"),
        (["--run-config", "num-rounds=1 oops"], "'oops' is not key=value"),
        (["--run-config", "strategy=fedavg"], "quote text: strategy='fedavg'"),
        (["--set", "lr_rate=0.1"], "unknown run-config key 'lr_rate'"),
        (["--set", "num_rounds=3"], "did you mean 'num-rounds'?); docs/configuration.md lists"),
        (["--set", "zzz=3"], "unknown run-config key 'zzz'; docs/configuration.md lists them all"),
        (["--set", "strategy=fedavgg"], "strategy='fedavgg' is not known"),
        (["--set", "strategy=coteachingplus"], "(did you mean 'coteaching-plus'?); allowed:"),
        (["--set", "noise-rate=2"], "noise-rate"),
        (["--set", "lr=inf"], "lr=inf is not allowed: it must be a finite number"),
        (["--set", "clients-per-round=1.5"], "a fraction of the clients is in (0, 1]"),
        (["--set", "clients-per-round=11"], "clients-per-round=11 is larger than"),
        (["--federation-config", "client-resources-num-cpu=1"], "did you mean"),
        (["--federation-config", "num-supernodes=4"], "num-supernodes is set by --num-clients"),
        (["--runtime", "inprocess", "--federation-config", "verbose=true"], "Ray's runtime"),
        (["--federation-config", "client-resources-num-gpus=0.5"], "this machine has no GPU"),
        (["--federation-config", "client-resources-num-cpus=64"], "no client could run"),
        pytest.param(
            ["--set", "device=cuda"],
            "device='cuda' was asked for",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
        (["--set", "run-name=../elsewhere"], "it names one folder inside out-dir"),
        (["--run-config", "num-rounds"], "(a setting is key=value, e.g. num-rounds=3)"),
    ],
)
def test_a_bad_argument_exits_2_naming_it(capsys, tmp_path, argv, message):
    code, _, err = run_main(capsys, "--check", "--set", f"out-dir={tmp_path}", *argv)
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1  # one message, no traceback


def test_every_bad_value_and_name_is_named_in_one_message(capsys, tmp_path):
    """Several mistakes at once (types, ranges, choices, the owners' names) come out together,
    not one per try; a name whose value has the wrong type is named once, for its type."""
    code, _, err = run_main(
        capsys, "--check", "--set", f"out-dir={tmp_path}", "--set", "num-rounds=abc",
        "--set", "lr=-1", "--set", "device=tpu", "--set", "strategy=fedfoo",
        "--set", "dataset=3", "--set", "partition=random", "--set", "model=vgg",
    )  # fmt: skip
    assert code == 2
    assert err.startswith("error: 7 problems in the run config:")
    for part in ("num-rounds='abc' must be of type int", "lr=-1.0", "device='tpu'",
                 "strategy='fedfoo'", "dataset=3 must be of type str", "partition='random'",
                 "model='vgg'"):  # fmt: skip
        assert f"\n  - {part}" in err, part
    assert "dataset=''" not in err


@pytest.mark.parametrize("module", [simulation, deploy_local])
def test_unreadable_items_values_and_the_strategy_s_settings_in_one_message(
    capsys, tmp_path, module
):
    """An unreadable item, a bad value and the strategy's own refusal come out together; the
    strategy's check quotes only values the user gave (not a stand-in num-rounds or lr)."""
    code, _, err = run_main(
        capsys, "--check", "--set", f"out-dir={tmp_path}", "--set", "momentum",
        "--set", "strategy=maskedoptim", "--set", "num-rounds=3", "--set", "warmup-rounds=0",
        "--set", "lr=-1", "--run-config", "seed=1 seed=2", module=module,
    )  # fmt: skip
    assert code == 2
    assert err.startswith("error: 4 problems in the run config:"), err
    for part in ("--set 'momentum': expected one key=value", "seed given 2 times (1, 2)",
                 "lr=-1.0 is not allowed", "got warmup-rounds=0"):  # fmt: skip
        assert part in err, part
    assert str(2**31) not in err
    # a value that could not be read is not replaced by its default in the other messages
    for argv, wanted, unwanted in (
        (["--run-config", "strategy=fedavg num-rounds=5"], "quote text", "strategy='maskedoptim'"),
        (["--set", "num-rounds=5", "--set", "num-rounds=6"], "(5, 6)", "below num-rounds="),
    ):
        code, _, err = run_main(capsys, "--check", *argv, module=module)
        assert code == 2 and wanted in err and unwanted not in err, err
    # an unknown model name hides no strategy's refusal
    code, _, err = run_main(
        capsys, "--check", "--set", "model=lenett", "--set", "num-rounds=10",
        "--set", "warmup-rounds=100", module=module,
    )  # fmt: skip
    assert code == 2 and "model='lenett'" in err and "got warmup-rounds=100" in err, err
    code, _, err = run_main(
        capsys, "--check", "--set", f"out-dir={tmp_path}", "--set", "strategy=bulyan",
        "--set", "clients-per-round=2", "--set", "lr=abc", module=module,
    )  # fmt: skip
    assert code == 2 and err.startswith("error: 2 problems in the run config:"), err
    assert "lr='abc' must be of type float" in err
    assert (
        "Give the federation 3 clients or more (it has 2) and clients-per-round=3"
        if module is deploy_local
        else "Set clients-per-round=3 or more"
    ) in err


def test_deploy_local_refuses_a_missing_preset_too(capsys):
    code, _, err = run_main(capsys, "--config", "nothere.toml", "--check", module=deploy_local)
    assert code == 2 and "no such preset file" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr = 0.1\nseed = 2\nlr = 0.2\n", "line 'lr = 0.2' gives lr a second time; give each"),
        ("lr = 0.1\nseed = two\n", "Invalid value (at line 2, column 8): line 'seed = two'"),
    ],
)
def test_a_preset_that_is_not_toml_is_refused_quoting_the_line(capsys, tmp_path, text, message):
    preset = tmp_path / "preset.toml"
    preset.write_text(text)
    code, _, err = run_main(capsys, "--config", str(preset), "--check")
    assert code == 2 and "not a valid TOML file" in err and message in err, err


@pytest.mark.parametrize(
    ("setting", "value"),
    [("noise-rate=0.3", "0.3"), ("clients-per-round=0.3", 0.3), ("clients-per-round=3", 3)],
)
def test_the_values_users_type_take_effect(setting, value, tmp_path):
    from common.config import RunConfig

    key = setting.split("=")[0]
    overrides = parse_overrides(set_items=[setting, f"out-dir={tmp_path}"])
    config = RunConfig.from_mapping(resolve_run_config(overrides))
    assert getattr(config, key.replace("-", "_")) == value


def test_the_default_clients_per_round_fits_any_federation():
    from common.config import config_with

    config = config_with()
    assert [config.clients_sampled(n) for n in (1, 2, 3, 10, 100)] == [1, 1, 2, 5, 50]


# --- 3, 4. the pre-flight finds what would fail later, once, naming it -------------------------


def test_an_impossible_partition_is_one_message_naming_the_key(capsys, tmp_path):
    code, out, err = run_main(
        capsys, "--num-clients", "2000", "--quiet", "--set", f"out-dir={tmp_path}"
    )
    assert code == 2
    assert "dirichlet-min-size=40" in err and "over 2000 clients" in err
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_clients_that_cannot_take_a_step_are_named_before_any_work(capsys, tmp_path):
    settings = (
        "strategy='fedavg' num-rounds=2 clients-per-round=1 local-epochs=1 "
        f"dirichlet-alpha=0.01 dirichlet-min-size=0 out-dir='{tmp_path}'"
    )
    code, _, err = run_main(
        capsys, "--num-clients", "40", "--runtime", "inprocess", "--run-config", settings
    )
    assert code == 2
    assert re.search(r"\d+ of 40 clients hold fewer samples than batch-size=16", err)
    assert re.search(r"client \d+: 0", err)  # an empty client is named with its size
    assert not (tmp_path / "fedavg").exists() and list(tmp_path.iterdir()) == []


def test_a_truncated_data_file_is_named(capsys, tmp_path):
    data = tmp_path / "cifar"
    write_fake_cifar(data, per_batch=200)
    batch = data / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[: len(batch.read_bytes()) // 2])
    code, _, err = run_main(
        capsys, "--check", "--num-clients", "10",
        "--set", "dataset=cifar10", "--set", "model=lenet", "--set", f"data-dir={data}",
        "--set", f"out-dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert code == 2
    assert f"{batch}: cannot be read as a CIFAR-10 pickle" in err


def test_an_unwritable_out_dir_is_refused_before_start_up(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_main(capsys, "--check", "--set", f"out-dir={blocker / 'results'}")
    assert code == 2 and "out-dir=" in err and "cannot be written" in err


# --- 7. no silent misconfiguration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["warmup-rounds=0"], "warmup-rounds must be at least 1 and below num-rounds=60"),
        (["warmup-rounds=0"], "got warmup-rounds=0 (no warm-up model to detect with)"),
        (["num-rounds=5", "warmup-rounds=5"], "got warmup-rounds=5 (detection would never run)"),
        (["num-rounds=5"], "(the default; detection would never run). Fix: set warmup-rounds=4 or"),
        (["strategy=fednoro", "num-rounds=3"], "baseline-warmup-rounds must be at least 1"),
        (["strategy=bulyan", "clients-per-round=2"], "Set clients-per-round=3 or more"),
    ],
)
def test_settings_that_would_silently_do_nothing_are_refused(capsys, tmp_path, settings, message):
    argv = [item for setting in settings for item in ("--set", setting)]
    code, _, err = run_main(capsys, "--check", "--set", f"out-dir={tmp_path}", *argv)
    assert code == 2 and message in err, err


def test_bulyans_hint_never_asks_for_a_rate_of_zero(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "--check", "--set", "strategy=bulyan", "--set", "clients-per-round=2",
        "--set", "compromised-rate=0.0", "--set", f"out-dir={tmp_path}",
    )  # fmt: skip
    assert code == 2 and "at most 0.000" not in err


# --- 2, 6. non-finite numbers and true statuses ------------------------------------------------


def strict_json(path: Path) -> dict:
    def refuse(constant):
        raise AssertionError(f"{path} holds a bare {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("strategy", ["fedavg", "maskedoptim", "rfa"])
def test_a_diverging_run_ends_diverged_with_a_nonzero_exit(capsys, tmp_path, strategy):
    code, out, err = run_main(
        capsys, "--runtime", "inprocess", "--num-clients", "6", "--quiet",
        "--set", f"strategy={strategy}", "--set", "lr=1e6", "--set", "num-rounds=3",
        "--set", "warmup-rounds=2", "--set", f"out-dir={tmp_path}", "--set", "run-name=r",
    )  # fmt: skip
    assert code == 1
    summary = strict_json(tmp_path / "r" / "summary.json")
    assert summary["status"] == "diverged"
    assert re.match(r"round \d: ", summary["error"])
    assert "status diverged" in err
    with open(tmp_path / "r" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert int(rows[-1]["nonfinite_uploads"]) > 0
    for name in ("config.json", "detection.json"):
        if (tmp_path / "r" / name).exists():
            strict_json(tmp_path / "r" / name)
    assert not list((tmp_path / "r").glob("*.tmp*"))


def test_on_divergence_continue_finishes_and_notes_it(capsys, tmp_path):
    code, _, _ = run_main(
        capsys, "--runtime", "inprocess", "--num-clients", "4", "--quiet",
        "--set", "strategy=fedavg", "--set", "lr=1e6", "--set", "num-rounds=2",
        "--set", "on-divergence=continue", "--set", f"out-dir={tmp_path}", "--set", "run-name=r",
    )  # fmt: skip
    assert code == 0
    summary = strict_json(tmp_path / "r" / "summary.json")
    assert summary["status"] == "completed" and summary["diverged"].startswith("round 1: ")
    assert summary["rounds_completed"] == 2 and summary["last_rounds_averaged"] == 2


# --- 5. every documented command runs as written -----------------------------------------------


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every simulation.py / deploy_local.py command in a fenced block of
    the README or docs/, continuation lines joined; plus the Makefile's run targets."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks = re.findall(r"^\s*```[a-z]*\n(.*?)^\s*```", path.read_text(), re.S | re.M)
        for block in blocks:
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split(" #")[0].strip()
                if re.match(r"(\.venv/bin/)?python (simulation|deploy_local)\.py", line):
                    found.append((path.name, line))
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(
            r"\t\$\(VENV\)/bin/python ((simulation|deploy_local)\.py.*) \$\(ARGS\)", line
        )
        if match:
            found.append(("Makefile", f"python {match.group(1)}"))
    return found


def test_the_docs_show_the_commands_this_test_runs():
    files = {name for name, _ in documented_commands()}
    assert {"README.md", "deployment.md", "results.md", "own-data.md", "Makefile"} <= files


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory) -> Path:
    """25,000 random training images in CIFAR-10's layout: room for the paper preset's 100
    Dirichlet clients of at least 100 (one folder, so the process loads it once), with a
    CIFAR-10-N label file beside it (the CIFAR-10-N preset's commands)."""
    data = tmp_path_factory.mktemp("cifar10")
    _, clean, _, _ = write_fake_cifar(data, per_batch=5000)
    write_fake_human(data / "CIFAR-10_human.pt", clean)
    return data


@pytest.fixture(scope="module")
def agnews_like(tmp_path_factory) -> Path:
    """6,000 training rows in AG News's CSV layout (class, title, description), as many as
    AG News mini: room for its preset's 20 Dirichlet clients of at least 100."""
    data = tmp_path_factory.mktemp("agnews")
    words = ("world talks", "sports cup", "business stocks", "science chip")
    rows = [
        [str(i % 4 + 1), f"{words[i % 4]} {i}", f"news {i} {words[i % 4]}"] for i in range(6000)
    ]
    write_csv(data / "train.csv", rows)
    write_csv(data / "test.csv", rows[:400])
    return data


@pytest.fixture(scope="module")
def own_example(tmp_path_factory) -> Path:
    """The example folders of docs/own-data.md, as its commands write them."""
    from data.own_data import main as own_data_main

    folder = tmp_path_factory.mktemp("own") / "own-example"
    assert own_data_main(["example", str(folder)]) == 0
    text = folder / "text"
    vocab = ["vocab", str(text / "a.csv"), str(text / "b.csv"), "--text-column", "review",
             "--label-column", "topic", "--out", str(text / "vocab.txt")]  # fmt: skip
    assert own_data_main(vocab) == 0
    return folder


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """A run folder as a killed run leaves it: a checkpoint after round 1, status running."""
    out = tmp_path_factory.mktemp("killed")
    code = simulation.main(
        ["--runtime", "inprocess", "--quiet", "--num-clients", "3", "--set", "num-rounds=2",
         "--set", "checkpoint-every=1", "--set", "strategy=fedavg", "--set", f"out-dir={out}",
         "--set", "run-name=r"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "r" / "summary.json").read_text())
    (out / "r" / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    return out / "r"


def test_check_leaves_no_folder_behind(capsys, tmp_path):
    out = tmp_path / "new" / "results"
    code, out_text, _ = run_main(capsys, "--set", f"out-dir={out}", "--check")
    assert code == 0 and "check passed" in out_text
    assert not (tmp_path / "new").exists()
    cmp = tmp_path / "cmp" / "a"
    code, _, _ = run_main(capsys, "--seeds", "1,2", "--out", str(cmp), "--check")
    assert code == 0 and not (tmp_path / "cmp").exists()
    (tmp_path / "there").mkdir()
    code, _, _ = run_main(capsys, "--set", f"out-dir={tmp_path / 'there'}", "--check")
    assert code == 0 and (tmp_path / "there").is_dir()  # a folder that was there stays


def test_resume_goes_on_with_the_runtime_that_made_the_run(capsys, killed_run):
    assert json.loads((killed_run / "config.json").read_text())["runtime"] == "inprocess"
    code, out, _ = run_main(capsys, "--resume", str(killed_run), "--check")
    assert code == 0 and "--runtime inprocess" in out
    code, out, _ = run_main(capsys, "--resume", str(killed_run), "--runtime", "flower", "--check")
    assert code == 0 and "--runtime flower" in out  # typed: it chooses


def test_ctrl_c_says_how_to_resume(capsys, tmp_path, monkeypatch):
    import launch.inprocess

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch.inprocess, "run_in_this_process", interrupted)
    one = ["--runtime", "inprocess", "--set", f"out-dir={tmp_path}", "--set", "run-name=r"]
    code, _, err = run_main(capsys, *one)
    assert code == 130 and f"--resume {tmp_path / 'r'}" in err
    code, _, err = run_main(capsys, *one[:2], "--seeds", "1,2", "--out", str(tmp_path / "c"))
    assert code == 130 and "run the same command again to resume" in err


@pytest.mark.parametrize(("where", "command"), documented_commands())
def test_every_documented_command_passes_the_preflight(
    capsys, tmp_path, cifar_like, agnews_like, own_example, killed_run, where, command
):
    """Each command as written, with its CIFAR-10 folder replaced by a generated one in the
    official layout (docs/own-data.md's example folders by the ones its command writes),
    results sent to a temporary folder, and --check (everything but the run)."""
    data = cifar_like
    argv = shlex.split(command)[1:]
    script, argv = argv[0], argv[1:]
    replaced = []
    for item in argv:
        item = item.replace(".data/agnews-mini", str(agnews_like))
        for placeholder in ("/data/cifar10", ".data/cifar10"):
            item = item.replace(placeholder, str(data))
        replaced.append(item.replace("/tmp/own-example", str(own_example)))
    module = simulation if script == "simulation.py" else deploy_local
    extra = ["--set", f"out-dir={tmp_path / 'results'}"]
    if "--resume" in replaced:  # a run folder as a killed run leaves it
        replaced[replaced.index("--resume") + 1] = str(killed_run)
    if "--out" in replaced:  # (out-dir and --out together are refused)
        replaced[replaced.index("--out") + 1] = str(tmp_path / "cmp")
        extra = []
    elif "--strategies" in replaced or "--seeds" in replaced:
        extra = ["--out", str(tmp_path / "cmp")]
    if module is deploy_local:
        extra += ["--workdir", str(tmp_path / "deploy")]
    code, out, err = run_main(capsys, *replaced, *extra, "--check", module=module)
    no_gpu = ("this machine has no GPU", "torch sees no CUDA GPU")
    if "client-resources-num-gpus=0.25" in command and any(text in err for text in no_gpu):
        assert code == 2
        pytest.skip("a GPU command on a machine without GPU (refused with exit 2, as it should)")
    assert code == 0, f"{where}: {command}\n{err}"
    assert "check passed" in out


def test_a_full_disk_ends_the_run_failed_with_the_reason(capsys, tmp_path):
    """out-dir on a 24 KiB tmpfs: the run fills it within its first rounds."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(disk)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        code, _, err = run_main(
            capsys, "--runtime", "inprocess", "--num-clients", "4", "--quiet",
            "--set", "strategy=fedavg", "--set", "num-rounds=40", "--set", f"out-dir={disk}",
            "--set", "run-name=r",
        )  # fmt: skip
        assert code == 1
        summary = strict_json(disk / "r" / "summary.json")
        assert summary["status"] == "failed"
        assert "No space left on device" in summary["error"]
        assert not list((disk / "r").glob("*.tmp*"))
        assert "status failed" in err
    finally:
        subprocess.run(["umount", str(disk)])


def test_a_run_starts_its_own_ray_unless_a_cluster_is_named(tmp_path, monkeypatch):
    """Ray joins any cluster started on the machine with `ray start` by itself; our runs do that
    only when asked (--ray-address, or RAY_ADDRESS in the environment)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert flower_environment(1234, tmp_path)["RAY_ADDRESS"] == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert flower_environment(1234, tmp_path)["RAY_ADDRESS"] == "10.0.0.5:6379"


def own_images(root: Path) -> Path:
    from fakedata import write_image_folder

    images = (np.arange(40 * 64).reshape(40, 8, 8) % 17).astype(np.uint8)
    write_image_folder(root, images, np.arange(40) % 3)
    return root


OWN_IMAGE_KEYS = (
    "--set", "dataset=imagefolder", "--set", "model=digitsnet", "--set", "image-size=8",
    "--set", "image-channels=1", "--set", "batch-size=4", "--set", "noise-type=none",
    "--set", "classes='zero,one,two,three,four,five,six,seven,eight,nine'",
)  # fmt: skip


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda root: (root / "five").mkdir(), "class folder '{root}/five' holds no image"),
        (lambda root: (root / "two" / "x.png").write_bytes(b"\0"), "'{root}/two/x.png' cannot"),
        (lambda root: (root / "dog").mkdir(), "holds class folder 'dog', which is not in"),
    ],
    ids=["empty class folder", "unreadable image", "class not in the list"],
)
def test_bad_own_data_is_refused_before_any_work(capsys, tmp_path, spoil, message):
    """In simulation (the folder carved) and in deployment (a folder per SuperNode)."""
    root = own_images(tmp_path / "images")
    spoil(root)
    code, _, err = run_main(
        capsys, "--check", *OWN_IMAGE_KEYS, "--set", f"data-dir='{root}'",
        "--set", f"out-dir='{tmp_path}'", "--num-clients", "2",
    )  # fmt: skip
    assert code == 2 and message.format(root=root) in err, err
    good = own_images(tmp_path / "good")
    code, _, err = run_main(
        capsys, "--check", *OWN_IMAGE_KEYS, "--client-data", str(good), "--client-data",
        str(root), "--set", f"out-dir='{tmp_path}'", module=deploy_local,
    )  # fmt: skip
    assert code == 2 and f"client 1 (--client-data {root})" in err, err
    assert message.format(root=root) in err and len(err.strip().splitlines()) == 1


def test_own_csv_text_without_the_named_columns_or_with_an_unknown_label_is_refused(
    capsys, tmp_path
):
    from fakedata import write_text_csv

    write_text_csv(tmp_path / "a.csv", ["goal match"] * 8, [0] * 8)
    write_text_csv(tmp_path / "b.csv", ["bank rate"] * 8, [1] * 8)
    keys = ("--set", "dataset='csv-text'", "--set", "model=fasttext", "--set", "batch-size=4",
            "--set", f"out-dir='{tmp_path}'", "--set", "noise-type=none")  # fmt: skip
    code, _, err = run_main(capsys, "--check", *keys, "--set", f"data-dir='{tmp_path / 'a.csv'}'")
    assert code == 2 and "has no column 'text' (its columns: review, topic)" in err, err
    keys += ("--set", "text-column=review", "--set", "label-column=topic")
    code, _, err = run_main(
        capsys, "--check", *keys, "--set", "classes='sport,science'",
        "--client-data", str(tmp_path / "a.csv"), "--client-data", str(tmp_path / "b.csv"),
        module=deploy_local,
    )  # fmt: skip
    assert code == 2 and "needs vocab-file" in err, err
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("<unk>\n<pad>\n<bos>\n<eos>\ngoal\n")
    code, _, err = run_main(
        capsys, "--check", *keys, "--set", "classes='sport,science'",
        "--set", f"vocab-file='{vocab}'",
        "--client-data", str(tmp_path / "a.csv"), "--client-data", str(tmp_path / "b.csv"),
        module=deploy_local,
    )  # fmt: skip
    assert (
        code == 2
        and "data row 1 (after the header): label 'money' is not in the class list (sport, science)"
        in err
    )
    code, out, err = run_main(
        capsys, "--check", *keys, "--set", "classes='sport,money'",
        "--set", f"vocab-file='{vocab}'",
        "--client-data", str(tmp_path / "a.csv"), "--client-data", str(tmp_path / "b.csv"),
        module=deploy_local,
    )  # fmt: skip
    assert code == 0 and "2 SuperNodes can start" in out, err


def test_synthetic_noise_on_clients_own_labels_is_refused_and_in_simulation_noted(capsys, tmp_path):
    """The default noise-type would corrupt a user's own labels and report them as the truth:
    refused when clients bring their own data, said aloud in a simulation on one folder."""
    root = own_images(tmp_path / "images")
    at = OWN_IMAGE_KEYS.index("noise-type=none")
    keys = OWN_IMAGE_KEYS[: at - 1] + OWN_IMAGE_KEYS[at + 1 :]  # the default noise-type
    code, _, err = run_main(
        capsys, "--check", *keys, "--client-data", str(root), "--client-data", str(root),
        "--set", f"out-dir='{tmp_path}'", module=deploy_local,
    )  # fmt: skip
    assert code == 2 and "noise-type='symmetric' would add synthetic noise" in err, err
    code, out, err = run_main(
        capsys, "--check", *keys, "--set", f"data-dir='{root}'", "--num-clients", "2",
        "--set", "partition=iid",
        "--set", f"out-dir='{tmp_path}'",
    )  # fmt: skip
    assert code == 0 and "note: noise-type='symmetric'" in err, err
    code, _, err = run_main(
        capsys, "--check", *[k.replace("=imagefolder", "=digits") for k in keys],
        "--client-data", str(root), "--set", f"out-dir='{tmp_path}'", module=deploy_local,
    )  # fmt: skip
    assert code == 2 and "--client-data needs a dataset a client can bring" in err, err
