"""The comparison table and plot (launch.comparison) and the sweep's helpers in simulation.py."""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from common.config import ConfigError, app_defaults
from fakedata import fake_run
from launch.comparison import (
    is_complete,
    load_run,
    markdown_table,
    mean_std,
    strategy_rows,
    write_comparison,
)
from launch.overrides import parse_overrides, typed_keys
from launch.sweep import (
    SweepProgress,
    comparison_entries,
    plan_comparison,
    rounds_done,
    stored_config_differences,
)
from server_app.results import RunResults
from simulation import comma_list


def detection_report(flagged: int, precision: float, before: float, after: float) -> dict:
    return {
        "detection": {
            "quality": {
                "flagged": flagged,
                "precision": precision,
                "recall": 0.5,
                "mean_true_rate_flagged": 0.3,
                "mean_true_rate_clean": 0.1,
            }
        },
        "label_correction": {
            "label_acc_observed": before,
            "label_acc_corrected": after,
            "label_f1_corrected": after,
        },
    }


def test_mean_std_uses_the_sample_deviation_and_skips_unknown_values():
    assert mean_std([1.0, None, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert mean_std([4.0]) == (4.0, None)
    assert mean_std([None]) == (None, None)


def test_load_run_reads_the_figures_the_results_writer_wrote(tmp_path):
    directory = fake_run(tmp_path, "fedavg", 3, [0.1, 0.5, 0.7])
    record = load_run(directory)
    assert (record.strategy, record.seed, record.status) == ("fedavg", 3, "completed")
    assert record.rounds_completed == 2
    assert record.figures["last10_accuracy"] == pytest.approx(60.0)
    assert record.figures["best_accuracy"] == pytest.approx(70.0)
    assert record.figures["last10_macro_f1"] == pytest.approx(30.0)
    assert record.accuracy_per_round == pytest.approx({0: 10.0, 1: 50.0, 2: 70.0})
    assert "flagged" not in record.figures
    assert is_complete(record, 2) and not is_complete(record, 3)
    assert load_run(tmp_path / "missing") is None


def test_an_interrupted_run_is_not_complete(tmp_path):
    directory = tmp_path / "fedavg-seed1"
    results = RunResults.create(directory, "x", {"run_config": {"strategy": "fedavg"}, "seed": 1})
    results.add_round({"round": 0, "test_accuracy": 0.1, "test_macro_f1": 0.1})
    results.add_round({"round": 1, "test_accuracy": 0.2, "test_macro_f1": 0.1})
    record = load_run(directory)
    assert record.status == "running" and not is_complete(record, 1)


def test_strategy_rows_average_over_seeds_in_the_requested_order(tmp_path):
    records = [
        load_run(fake_run(tmp_path, "rfa", 1, [0.1, 0.40])),
        load_run(fake_run(tmp_path, "fedavg", 2, [0.1, 0.60])),
        load_run(fake_run(tmp_path, "fedavg", 1, [0.1, 0.50])),
    ]
    rows = strategy_rows(records, order=["fedavg", "rfa"])
    assert [row["strategy"] for row in rows] == ["fedavg", "rfa"]
    assert rows[0]["seeds"] == "1,2"
    assert rows[0]["last10_accuracy_mean"] == pytest.approx(55.0)
    assert rows[0]["last10_accuracy_std"] == pytest.approx(statistics.stdev([50.0, 60.0]))
    assert rows[1]["last10_accuracy_std"] is None  # one seed: no spread to report


def test_the_table_names_the_rounds_its_last_means_averaged(tmp_path):
    long = [load_run(fake_run(tmp_path / "a", "fedavg", 1, [0.1 * i for i in range(12)]))]
    assert long[0].last_rounds == 10
    assert "| last-10 acc (%) |" in markdown_table(strategy_rows(long))
    short = [load_run(fake_run(tmp_path / "b", "rfa", 1, [0.1, 0.5, 0.7]))]  # 2 trained rounds
    assert short[0].last_rounds == 2
    table = markdown_table(strategy_rows(short))
    assert "| last-2 acc (%) |" in table and "| last-2 macro-F1 (%) |" in table
    assert "| last-2/10 acc (%) |" in markdown_table(strategy_rows(long + short))


def test_the_detection_columns_appear_only_for_strategies_that_detect(tmp_path):
    plain = [load_run(fake_run(tmp_path, "fedavg", 1, [0.1, 0.5]))]
    assert "det. precision" not in markdown_table(strategy_rows(plain))
    detecting = plain + [
        load_run(fake_run(tmp_path, "maskedoptim", s, [0.1, 0.5], detection_report(*figures)))
        for s, figures in ((1, (40, 0.9, 0.7, 0.8)), (2, (50, 0.7, 0.6, 0.8)))
    ]
    table = markdown_table(strategy_rows(detecting, ["fedavg", "maskedoptim"]))
    assert "det. precision" in table and "label acc after (%)" in table
    fedavg_line, masked_line = table.splitlines()[2:4]
    assert masked_line.startswith("| maskedoptim | 1,2 |")
    assert "| 45.00 ± 7.07 | 80.00 ± 14.14 |" in masked_line  # every rate in percent
    assert "| 65.00 ± 7.07 | 80.00 ± 0.00 |" in masked_line  # label accuracy before, after (%)
    assert fedavg_line.endswith("|  |  |  |  |  |  |  |  |")


def test_the_plot_colours_five_strategies_the_method_and_fedavg_first(tmp_path):
    from launch.comparison import highlighted

    def rows(*named):
        return strategy_rows([load_run(fake_run(tmp_path / n, n, 1, [0.1, a])) for n, a in named])

    five = rows(("fedavg", 0.5), ("rfa", 0.6), ("krum", 0.2), ("selfie", 0.4), ("fedlsr", 0.3))
    assert highlighted(five) == ["fedavg", "rfa", "selfie", "fedlsr", "krum"]  # none faded
    seven = rows(("maskedoptim", 0.1), ("fedavg", 0.5), ("rfa", 0.6), ("krum", 0.2),
                 ("selfie", 0.4), ("fedlsr", 0.3), ("median-torch", 0.7))  # fmt: skip
    assert highlighted(seven) == ["maskedoptim", "fedavg", "median-torch", "rfa", "selfie"]


def test_write_comparison_writes_tables_and_plot(tmp_path):
    runs = tmp_path / "runs"
    records = [
        load_run(fake_run(runs, strategy, seed, [0.1, 0.2 + 0.1 * seed]))
        for strategy in ("fedavg", "fedmedian")
        for seed in (1, 2)
    ]
    out = tmp_path / "cmp"
    write_comparison(out, records, ["fedmedian", "fedavg"], "title", "Made by a test.")
    with open(out / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["strategy"] for row in rows] == ["fedmedian", "fedavg"]
    assert float(rows[1]["last10_accuracy_mean"]) == pytest.approx(35.0)
    assert rows[1]["last_rounds_averaged"] == "1"  # a run of one trained round averaged one
    with open(out / "runs.csv") as handle:
        runs_rows = list(csv.DictReader(handle))
    assert {r["last_rounds_averaged"] for r in runs_rows} == {"1"}
    assert [(r["strategy"], r["seed"]) for r in runs_rows] == [
        ("fedmedian", "1"),
        ("fedmedian", "2"),
        ("fedavg", "1"),
        ("fedavg", "2"),
    ]
    text = (out / "comparison.md").read_text()
    assert text.startswith("# title\n\nMade by a test.")
    assert "| fedavg | 1,2 | 35.00 ± 7.07 |" in text
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*.tmp"))


def test_set_options_take_toml_values_or_plain_strings():
    assert parse_overrides(
        set_items=["lr=0.1", "strategy=fedavg", "data-dir='/x y'", "download=true"]
    ) == {
        "lr": 0.1,
        "strategy": "fedavg",
        "data-dir": "/x y",
        "download": True,
    }
    with pytest.raises(ConfigError, match="'lr'"):
        parse_overrides(set_items=["lr"])
    with pytest.raises(ConfigError, match=r"--set lr given 3 times \(0.1, 0.2, 0.3\)"):
        parse_overrides(set_items=["lr=0.1", "lr=0.2", "lr=0.3"])


def test_a_key_twice_in_one_run_config_string_is_refused():
    assert parse_overrides(["lr=0.1", "lr=0.2"]) == {"lr": 0.2}  # later options win
    with pytest.raises(ConfigError, match=r"lr given 2 times \(0.1, 0.2\)"):
        parse_overrides(["lr=0.1 seed=3 lr=0.2"])


def test_comma_lists_keep_order_and_refuse_repeats():
    assert comma_list("rfa, fedavg") == ["rfa", "fedavg"]
    with pytest.raises(argparse.ArgumentTypeError, match="rfa given more than once"):
        comma_list("rfa, fedavg,rfa")
    with pytest.raises(argparse.ArgumentTypeError, match="1 given more than once"):
        comma_list("1,2,1", int)
    assert comma_list("3,1", int) == [3, 1]
    with pytest.raises(argparse.ArgumentTypeError, match="^'x', 'y' in '1,x,y': a comma-sep"):
        comma_list("1,x,y", int)


def test_stored_config_differences_name_the_changed_keys(tmp_path):
    directory = fake_run(tmp_path, "fedavg", 1, [0.1, 0.2])
    wanted = {**app_defaults(), "strategy": "fedavg", "seed": 1, "out-dir": "/elsewhere"}
    assert stored_config_differences(directory, wanted, 10) == []
    assert stored_config_differences(directory, {**wanted, "lr": 0.5}, 10) == ["lr (0.05 there)"]
    assert stored_config_differences(directory, wanted, 4) == ["--num-clients (10 there)"]
    assert stored_config_differences(tmp_path / "nothing", wanted, 10) == []


def test_progress_reads_rounds_and_estimates_what_is_left(tmp_path):
    directory = fake_run(tmp_path, "fedavg", 1, [0.1, 0.2, 0.3])
    done, elapsed = rounds_done(directory)
    assert done == 2 and elapsed >= 0.0
    progress = SweepProgress(num_rounds=4)
    progress.start("[1/3] fedavg seed 1", directory, runs_after=2)
    # Half of this run left at 10 s per round, then two runs of the projected length.
    left = progress.estimate_left(done=2, round_seconds=10.0)
    assert left >= 20.0 + 2 * 20.0
    progress.run_seconds = [100.0]  # once a run has finished, its length is the estimate
    assert progress.estimate_left(done=2, round_seconds=10.0) == pytest.approx(20.0 + 200.0)
    # round 0 of the last run: the whole run is ahead (it said "0m00s left"), or unknown
    progress.runs_after = 0
    assert progress.estimate_left(done=0, round_seconds=0.0) == pytest.approx(100.0)
    progress.run_seconds = []
    assert math.isnan(progress.estimate_left(done=0, round_seconds=0.0))


def test_a_key_the_strategy_does_not_read_does_not_invalidate_its_run(tmp_path):
    directory = fake_run(tmp_path, "fedavg", 1, [0.1, 0.2])
    wanted = {**app_defaults(), "strategy": "fedavg", "seed": 1, "compromised-rate": 0.3}
    assert stored_config_differences(directory, wanted, 10) == []  # fedavg ignores it
    krum = fake_run(tmp_path, "krum", 1, [0.1, 0.2])
    wanted_krum = {**wanted, "strategy": "krum"}
    assert stored_config_differences(krum, wanted_krum, 10) == ["compromised-rate (0.1 there)"]


def test_a_key_added_after_the_run_counts_as_its_default(tmp_path):
    """A run made before a key existed ran as that key's default; resuming it must not be refused
    unless the sweep now asks for another value."""
    directory = fake_run(tmp_path, "fedavg", 1, [0.1, 0.2])
    stored = json.loads((directory / "config.json").read_text())
    del stored["run_config"]["precision"]
    (directory / "config.json").write_text(json.dumps(stored))
    wanted = {**app_defaults(), "strategy": "fedavg", "seed": 1}
    assert stored_config_differences(directory, wanted, 10) == []
    other = "fp16" if app_defaults()["precision"] != "fp16" else "fp32"
    assert stored_config_differences(directory, {**wanted, "precision": other}, 10) == [
        f"precision ({app_defaults()['precision']!r} there)"
    ]


def test_a_variant_file_is_its_own_row_beside_its_strategy(tmp_path):
    """Runs of a variant (folder `<stem>-seed<seed>`) group under the file's stem, not under
    the strategy they vary; a folder named otherwise is labelled by its strategy."""
    records = [
        load_run(fake_run(tmp_path, "maskedoptim", 1, [0.1, 0.50])),
        load_run(fake_run(tmp_path, "maskedoptim", 1, [0.1, 0.70], label="weak-model")),
        load_run(fake_run(tmp_path, "maskedoptim", 2, [0.1, 0.60], label="weak-model")),
    ]
    assert [r.strategy for r in records] == ["maskedoptim"] * 3
    assert [r.label for r in records] == ["maskedoptim", "weak-model", "weak-model"]
    rows = strategy_rows(records, order=["weak-model", "maskedoptim"])
    assert [(row["strategy"], row["seeds"]) for row in rows] == [
        ("weak-model", "1,2"),
        ("maskedoptim", "1"),
    ]
    assert rows[0]["last10_accuracy_mean"] == pytest.approx(65.0)
    renamed = tmp_path / "my-run"
    (tmp_path / "maskedoptim-seed1").rename(renamed)
    assert load_run(renamed).label == "maskedoptim"


def write_variant(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_comparison_entries_read_variant_files_and_refuse_what_would_be_dropped(tmp_path):
    weak = write_variant(
        tmp_path / "weak.toml", 'strategy = "maskedoptim"\nnoisy-detector = "robust-score"\n'
    )
    entries = comparison_entries(["fedavg", weak], typed={})
    assert [(e.label, e.keys) for e in entries] == [
        ("fedavg", {"strategy": "fedavg"}),
        ("weak", {"strategy": "maskedoptim", "noisy-detector": "robust-score"}),
    ]
    nameless = write_variant(tmp_path / "nameless.toml", 'noisy-detector = "robust-score"\n')
    with pytest.raises(ConfigError, match="nameless.toml: a variant file names the strategy"):
        comparison_entries([nameless], typed={})
    table = write_variant(tmp_path / "table.toml", 'strategy = "rfa"\n[federation]\nx = 1\n')
    with pytest.raises(ConfigError, match=r"not \[federation\]"):
        comparison_entries([table], typed={})
    shadow = write_variant(tmp_path / "rfa.toml", 'strategy = "maskedoptim"\n')
    with pytest.raises(ConfigError, match="'rfa' is a strategy's name"):
        comparison_entries([shadow], typed={})
    with pytest.raises(ConfigError, match="no such variant file"):
        comparison_entries([str(tmp_path / "missing.toml")], typed={})
    # a key typed on the command line and set by the variant: one of them would be dropped
    typed = typed_keys(["configs/paper-cifar10-lenet.toml", "lr=0.1"], ["noisy-detector=gmm"])
    assert typed == {"lr", "noisy-detector"}
    with pytest.raises(ConfigError, match="weak.toml sets noisy-detector, also given"):
        comparison_entries([weak], typed=dict.fromkeys(typed))
    with pytest.raises(ConfigError, match="strategy='rfa' given with --set"):
        comparison_entries(["fedavg", "rfa"], typed={"strategy": "rfa"})
    assert comparison_entries(["fedavg"], typed={"strategy": "fedavg"})  # nothing dropped
    with pytest.raises(ConfigError, match="did you mean 'fedavg'"):
        comparison_entries(["fedavgg"], typed={})
    with pytest.raises(ConfigError, match=f"did you mean {tmp_path / 'weak.toml'}"):
        comparison_entries([str(tmp_path / "waek.toml")], typed={})
    with pytest.raises(ConfigError, match=f"did you mean {tmp_path / 'weak'}.toml"):
        comparison_entries([str(tmp_path / "weak")], typed={})
    twin = tmp_path / "other"
    twin.mkdir()
    twin_weak = write_variant(twin / "weak.toml", 'strategy = "rfa"\n')
    with pytest.raises(ConfigError, match="two entries named 'weak'"):
        comparison_entries([weak, twin_weak], typed={})


def test_plan_comparison_puts_a_variants_keys_over_the_common_ones(tmp_path):
    weak = write_variant(
        tmp_path / "weak.toml", 'strategy = "maskedoptim"\nnoisy-detector = "robust-score"\n'
    )
    entries = comparison_entries(["maskedoptim", weak], typed={})
    common = {"num-rounds": 3, "warmup-rounds": 1, "noisy-detector": "per-class-gmm"}
    plans = plan_comparison(common, entries, [1, 2], tmp_path / "cmp", 4)
    assert [(p["run-name"], p["strategy"], p["noisy-detector"]) for p in plans] == [
        ("maskedoptim-seed1", "maskedoptim", "per-class-gmm"),
        ("weak-seed1", "maskedoptim", "robust-score"),
        ("maskedoptim-seed2", "maskedoptim", "per-class-gmm"),
        ("weak-seed2", "maskedoptim", "robust-score"),
    ]
    assert {p["num-rounds"] for p in plans} == {3}


def test_a_bad_value_is_refused_by_the_strategy_of_the_sweep_that_reads_it(tmp_path):
    """fedavg comes first in the sweep, but fedrn, which reads fedrn-alpha, is checked first."""
    entries = comparison_entries(["fedavg", "fedrn"], typed={})
    common = {"num-rounds": 40, "fedrn-alpha": 1.5}
    with pytest.raises(ConfigError) as refused:
        plan_comparison(common, entries, [1], tmp_path / "cmp", 6)
    assert str(refused.value).startswith("strategy='fedrn': fedrn-alpha=1.5 must be in [0, 1]")
    assert "does not read" not in str(refused.value)


def test_every_run_s_problems_are_named_in_one_message(tmp_path):
    """Each strategy's warm-up too long for the sweep, and a key no run reads, once each."""
    entries = comparison_entries(["fedavg", "maskedoptim", "feddiv", "fedrn"], typed={})
    common = {"num-rounds": 3, "forget-rate": 3.0}
    with pytest.raises(ConfigError) as refused:
        plan_comparison(common, entries, [1, 2], tmp_path / "cmp", 6)
    message = str(refused.value)
    assert message.startswith("4 problems in the run config:")
    for part in (
        "strategy='maskedoptim': ",
        "strategy='feddiv': baseline-warmup-rounds=20",
        "strategy='fedrn': label-warmup-rounds=30",
        "forget-rate=3.0 must be",
    ):
        assert f"\n  - {part}" in message, part  # fmt: skip
    assert message.count("forget-rate") == 1
    assert (
        "(a key of coteaching, coteaching-plus, robustfl, which no run of this comparison reads)"
        in message
    )


def test_every_strategies_item_s_problem_and_each_variant_s_own_are_named_at_once(tmp_path):
    bad = write_variant(tmp_path / "bad.toml", 'strategy = "maskedoptim"\nmask-keep = 3\n')
    with pytest.raises(ConfigError) as refused:
        comparison_entries(["fedavgg", str(tmp_path / "none.toml"), "FedProx", bad], typed={})
    assert [p.split(" is ")[0].split(":")[0] for p in refused.value.problems] == [
        "--strategies 'fedavgg'",
        f"--strategies '{tmp_path / 'none.toml'}'",
        "--strategies 'FedProx'",
    ]
    entries = comparison_entries(["fedavg", bad], typed={})
    with pytest.raises(ConfigError) as refused:
        plan_comparison({"lr": -1.0}, entries, [1, 2], tmp_path / "cmp", 4)
    assert refused.value.problems == [
        "lr=-1.0 is not allowed: it must be >= 0",
        f"--strategies {bad}: mask-keep=3.0 must be in [0, 1]",
    ]


def test_keys_chosen_for_a_strategy_that_does_not_read_them_are_named(tmp_path, capsys):
    from launch.overrides import chosen_keys
    from launch.preflight import note_unread_keys

    variant = tmp_path / "weak.toml"
    variant.write_text('strategy = "maskedoptim"\nnoisy-components = 3\n')
    preset = "configs/paper-cifar10-lenet.toml"  # compromised-rate: the setting's, not chosen
    chosen = chosen_keys([preset, str(variant), "lr=0.1"], ["strategy=fedavg"])
    assert chosen == {"strategy", "noisy-components", "lr"}
    note_unread_keys(["fedavg"], chosen)
    note = capsys.readouterr().err
    assert note.startswith("note: noisy-components: not read by strategy fedavg")
    assert "maskedoptim" in note and "lr" not in note and "compromised-rate" not in note
    note_unread_keys(["fedavg", "maskedoptim"], chosen)  # a comparison: one strategy reads it
    assert capsys.readouterr().err == ""
