"""What a user types on a launcher's command line, parsed strictly: every item takes effect or is
refused with a message that names it (`ConfigError`, which the launchers turn into exit 2).

- `--run-config` / `--config`: a preset file (TOML) or "key=value ..." with TOML values;
- `--set key=value`: one key, a TOML value or else a plain string;
- `--federation-config "key=value ..."`: Flower's simulation settings.

Flower's own `parse_config_args` keeps only the parts of a string that look like key=value and
drops the rest without a word (`--config configs/preset` without `.toml` became "no override");
this parser reads the whole text or refuses it. Only the standard library here.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.errors import ConfigError

# key=value, the value quoted ('...' or "...") or up to the next space: Flower's syntax.
_PAIR = re.compile(r"""\s*([^\s=]+)=('[^']*'|"[^"]*"|\S+)\s*""")


def split_pairs(text: str, option: str) -> list[tuple[str, str]]:
    """`text` as (key, raw value) pairs; raises ConfigError naming the first part that is not
    key=value (nothing is skipped) or a key given twice (one value would be dropped)."""
    pairs, position = [], 0
    while position < len(text.strip()) and text[position:].strip():
        match = _PAIR.match(text, position)
        if match is None:
            bad = text[position:].split()[0]
            raise ConfigError(
                f"{option} {text!r}: {bad!r} is not key=value (a preset file's path ends in .toml)"
            )
        pairs.append((match.group(1), match.group(2)))
        position = match.end()
    keys = [key for key, _ in pairs]
    repeated = [key for key in dict.fromkeys(keys) if keys.count(key) > 1]
    if repeated:
        values = [raw for key, raw in pairs if key == repeated[0]]
        raise ConfigError(
            f"{option} {text!r}: {repeated[0]} given {len(values)} times ({', '.join(values)}); "
            "give each key once"
        )
    return pairs


def toml_value(raw: str, key: str, option: str) -> Any:
    """A value in TOML syntax (123, 0.5, true, 'text'); ConfigError saying how to write it:
    for a key that takes a number or true/false (its default's kind), that, not quoting."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        pass
    from common.config import app_defaults

    kind = FEDERATION_KEYS.get(key) or type(app_defaults().get(key, ""))
    if kind is bool:
        hint = f"{key} is true or false"
    elif kind in (int, float):
        hint = f"{key} takes a number, e.g. {key}={app_defaults().get(key, 1)}"
        if "," in raw and "=" in raw:
            hint += " (settings in one --run-config are separated by spaces)"
    else:
        hint = "write numbers and true/false as they are and quote text: "
        hint += f"{key}='{raw.strip(chr(39) + chr(34))}'"
    raise ConfigError(f"{option}: {key}={raw} is not a TOML value; {hint}")


def read_overrides(
    run_config_items: Iterable[str], set_items: Iterable[str]
) -> tuple[dict[str, Any], list[str], set[str]]:
    """The keys typed on a launcher's command line, the problem of every item that could not
    be read, and the keys whose value is therefore unknown (left out of the keys: their
    defaults must not be quoted as if typed). `--run-config` items merge left to right (preset
    files: any item without '='; or "key=value ..." strings with TOML values), then `--set`
    items (a TOML value or else a plain string). The readable items still count, so that a
    launcher can name the other problems of the run config in the same message
    (launch.preflight.command_line_overrides)."""
    merged: dict[str, Any] = {}
    problems: list[str] = []
    unread: set[str] = set()
    for item in run_config_items:
        try:
            if "=" not in item:
                merged.update(read_preset(item))
                continue
            pairs = split_pairs(item, "--run-config")
        except ConfigError as err:
            problems.append(str(err))
            unread |= set(re.findall(r"([^\s=]+)=", item))
            continue
        for key, raw in pairs:
            try:
                merged[key] = toml_value(raw, key, "--run-config")
                unread.discard(key)
            except ConfigError as err:
                problems.append(str(err))
                unread.add(key)
    given: dict[str, list[Any]] = {}  # each --set key's values, in order
    for item in set_items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or " " in key:
            problems.append(f"--set {item!r}: expected one key=value")
            unread.add(key)
            continue
        try:
            value = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # so --set strategy=fedavg works as well as 'fedavg'
        given.setdefault(key, []).append(value)
    typed = {key: values[0] for key, values in given.items() if len(values) == 1}
    unread = (unread - set(typed)) | {key for key in given if key not in typed}
    for key, values in given.items():
        if len(values) > 1:  # which one was meant is not known
            problems.append(
                f"--set {key} given {len(values)} times ({', '.join(map(repr, values))}); "
                "give each key once"
            )
    merged = {key: value for key, value in (merged | typed).items() if key not in unread}
    return merged, problems, unread


def parse_overrides(
    run_config_items: Iterable[str] = (), set_items: Iterable[str] = ()
) -> dict[str, Any]:
    """`--run-config` then `--set` items merged (read_overrides); one ConfigError naming every
    bad item."""
    from common.config import config_error

    merged, problems, _ = read_overrides(run_config_items, set_items)
    if problems:
        raise config_error(problems)
    return merged


PRESET_FEDERATION_KEYS = ("num-clients",)


def preset_num_clients(items: Iterable[str]) -> int | None:
    """The federation size the last preset file among `items` states in its `[federation]`
    table (`num-clients = 100`), or None; ConfigError naming the file when the table is not
    allowed (read_preset). Flower's own `flwr run --run-config FILE` ignores the table (it
    keeps only the app's keys)."""
    size = None
    for item in items:
        if "=" not in item:
            read_preset(item)  # its [federation] table checked
            size = _read_toml(item).get("federation", {}).get("num-clients", size)
    return size


def nearest(name: str, choices: Iterable[str]) -> str | None:
    """The choice spelled most like `name` (difflib's default cutoff), or None."""
    near = difflib.get_close_matches(name, list(choices), n=1)
    return near[0] if near else None


def _first_table(values: dict[str, Any]) -> str | None:
    """The first key of a TOML file's top level that holds a table, or None."""
    return next((key for key, value in values.items() if isinstance(value, dict)), None)


def read_preset(item: str) -> dict[str, Any]:
    """A preset file's run-config keys; ConfigError when it is missing, not TOML, or holds a
    table other than `[federation]` with `num-clients` (a positive integer)."""
    values = _read_toml(item)
    federation = values.pop("federation", {})
    table = _first_table(values)
    if table is not None:
        raise ConfigError(
            f"--run-config {item}: a preset holds plain keys and a [federation] table, not "
            f"[{table}]"
        )
    unknown = sorted(set(federation) - set(PRESET_FEDERATION_KEYS))
    size = federation.get("num-clients", 1)
    if unknown or not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(
            f"--run-config {item}: its [federation] table holds only num-clients, a positive "
            f"integer (got {', '.join(f'{k} = {v!r}' for k, v in federation.items())})"
        )
    return values


def read_variant(item: str) -> dict[str, Any]:
    """A variant file's run-config keys (`--strategies a,configs/variants/NAME.toml`): plain
    keys only, `strategy` among them (the strategy it varies); ConfigError otherwise."""
    values = _read_toml(item, "--strategies")
    table = _first_table(values)
    if table is not None:
        raise ConfigError(
            f"--strategies {item}: a variant file holds plain run-config keys, not [{table}]"
        )
    if not isinstance(values.get("strategy"), str):
        raise ConfigError(
            f"--strategies {item}: a variant file names the strategy it varies, e.g. "
            'strategy = "maskedoptim"'
        )
    return values


def typed_keys(run_config_items: Iterable[str], set_items: Iterable[str]) -> set[str]:
    """The keys typed on the command line (`--run-config "key=value ..."`, `--set`), not those
    that came from preset files."""
    keys = {key for item in run_config_items if "=" in item for key, _ in split_pairs(item, "")}
    return keys | set(parse_overrides(set_items=set_items))


def chosen_keys(run_config_items: Iterable[str], set_items: Iterable[str]) -> set[str]:
    """The keys chosen for the run's strategy: those typed (typed_keys) and those of a file that
    names a strategy (a variant file's keys are meant for its strategy). A preset's other keys
    describe the setting, for whichever strategy runs (compromised-rate for the Krum family)."""
    keys = typed_keys(run_config_items, set_items)
    for item in run_config_items:
        if "=" not in item:
            values = read_preset(item)
            keys |= set(values) if "strategy" in values else set()
    return keys


def _read_toml(item: str, option: str = "--run-config") -> dict[str, Any]:
    path = Path(item).expanduser()
    if not path.is_file():
        if Path(f"{path}.toml").is_file():
            hint = f"; did you mean {item}.toml?"
        else:  # the nearest name in its folder, else (a bare name) in configs/
            hint = _nearest_file(path)
            if not hint and path.parent == Path(".") and option == "--run-config":
                hint = _nearest_file(Path("configs") / path.name)
        raise ConfigError(
            f"{option} {item!r}: no such preset file{hint} (a setting is key=value, "
            "e.g. num-rounds=3)"
            if option == "--run-config"
            else f"{option} {item!r}: no such variant file{hint}"
        )
    try:
        text = path.read_bytes().decode()
        return tomllib.loads(text)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{option} {item}: not a valid TOML file ({err})") from None
    except tomllib.TOMLDecodeError as err:
        problem = _toml_problem(err, text)
        raise ConfigError(f"{option} {item}: not a valid TOML file ({problem})") from None


def _toml_problem(err: tomllib.TOMLDecodeError, text: str) -> str:
    """tomllib's message, with the line it points at quoted ('Cannot overwrite a value (at line
    3, column 9)' alone does not say that the key is given twice, nor which key)."""
    match = re.search(r"at line (\d+)", str(err))
    number, lines = int(match.group(1)) if match else 0, text.splitlines()
    if not 1 <= number <= len(lines):
        return str(err)
    line = lines[number - 1].strip()
    key = line.partition("=")[0].strip()
    earlier = [before.partition("=")[0].strip() for before in lines[: number - 1]]
    if str(err).startswith("Cannot overwrite a value") and key and key in earlier:
        return f"{err}: line {line!r} gives {key} a second time; give each key once"
    return f"{err}: line {line!r}"


def _nearest_file(path: Path) -> str:
    """'; did you mean X?' for the closest-named .toml file in `path`'s folder, or ''."""
    folder = path.parent if path.parent.is_dir() else None
    near = nearest(path.name, sorted(p.name for p in folder.glob("*.toml"))) if folder else None
    return f"; did you mean {folder / near}?" if near else ""


def unknown_key_message(
    unknown: Iterable[str], known: Iterable[str], what: str, listed_in: str = ""
) -> str:
    """'unknown run-config key 'lr_rate' (did you mean 'lr'?)' with the nearest known keys;
    then where `listed_in`, a document, lists them (the run config's 140 keys on one line
    would bury the message), else the known keys."""
    known = list(known)
    parts = []
    for key in sorted(unknown):
        spelled = key.replace("_", "-").lower()
        near = spelled if spelled in known else nearest(spelled, known)
        parts.append(f"'{key}'" + (f" (did you mean '{near}'?)" if near else ""))
    what += "s" if len(parts) > 1 else ""
    if listed_in:
        return f"unknown {what} {', '.join(parts)}; {listed_in} lists them all"
    return f"unknown {what} {', '.join(parts)}; known: {', '.join(known)}"


# Flower 1.41's simulation settings (flwr/cli/federation/simulation_config.py): key -> kind.
# num-supernodes is not here: the launchers set it from --num-clients.
FEDERATION_KEYS: dict[str, type] = {
    "client-resources-num-cpus": float,
    "client-resources-num-gpus": float,
    "init-args-num-cpus": int,
    "init-args-num-gpus": int,
    "init-args-logging-level": str,
    "init-args-log-to-driver": bool,
    "backend-name": str,
    "verbose": bool,
}


def parse_federation_config(text: str) -> dict[str, Any]:
    """`--federation-config` as typed values; ConfigError for an unknown key, a value of the
    wrong kind or out of range, and for num-supernodes (give --num-clients)."""
    settings: dict[str, Any] = {}
    for key, raw in split_pairs(text, "--federation-config"):
        if key == "num-supernodes":
            raise ConfigError(
                "--federation-config: num-supernodes is set by --num-clients (--num-supernodes "
                "for deploy_local.py); give it there"
            )
        if key not in FEDERATION_KEYS:
            raise ConfigError(
                unknown_key_message([key], FEDERATION_KEYS, "--federation-config key")
            )
        value = toml_value(raw, key, "--federation-config")
        kind = FEDERATION_KEYS[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"--federation-config: {key}={raw} must be of type {kind.__name__}")
        settings[key] = value
    if settings.get("client-resources-num-cpus", 1) <= 0:
        raise ConfigError(
            f"--federation-config: client-resources-num-cpus="
            f"{settings['client-resources-num-cpus']:g}: it must be above 0"
        )
    for key, least in (
        ("client-resources-num-gpus", 0),
        ("init-args-num-cpus", 1),
        ("init-args-num-gpus", 0),
    ):
        if key in settings and settings[key] < least:
            word = "0 or more" if least == 0 else f"at least {least}"
            raise ConfigError(f"--federation-config: {key}={settings[key]:g}: it must be {word}")
    if settings.get("backend-name", "ray") != "ray":
        raise ConfigError(
            f"--federation-config: backend-name={settings['backend-name']!r}; Flower 1.41 "
            "has only 'ray'"
        )
    return settings


def federation_text(settings: dict[str, Any]) -> str:
    """Settings back in Flower's `--federation-config` syntax."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return f"'{value}'" if isinstance(value, str) else f"{value:g}"

    return " ".join(f"{key}={text(value)}" for key, value in settings.items())
