"""docker/: the app image and the compose files (no engine runs here: structure checked)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
PYPROJECT = DOCKER.parent / "pyproject.toml"


def services(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())["services"]


def flag(command: list[str], name: str) -> str | None:
    values = [c.split("=", 1)[1] for c in command if c.startswith(f"--{name}=")]
    return values[0] if values else None


def test_the_app_image_is_the_superexec_with_the_pinned_dependencies():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM flwr/superexec:1\.41\.0$", text, re.M)
    pins = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for pin in pins:
        if not pin.startswith("flwr"):  # the base image is Flower itself
            assert f'"{pin}"' in text, pin


@pytest.mark.parametrize("name", ["compose.yml", "compose.tls.yml"])
def test_compose_has_a_superlink_its_executor_and_one_executor_per_supernode(name):
    found = services(name)
    assert found["superlink"]["image"] == "flwr/superlink:1.41.0"
    assert "--isolation=process" in found["superlink"]["command"]
    assert flag(found["serverapp"]["command"], "runtime-api-address") == "superlink:9093"
    supernodes = sorted(s for s in found if s.startswith("supernode-"))
    assert len(supernodes) >= 2
    partitions, ports, volumes = set(), set(), set()
    for supernode in supernodes:
        index = supernode.split("-")[1]
        command = found[supernode]["command"]
        assert found[supernode]["image"] == "flwr/supernode:1.41.0"
        assert flag(command, "superlink") == "superlink:9093"
        node_config = dict(item.split("=", 1) for item in flag(command, "node-config").split())
        assert node_config["partition-id"] == index
        assert int(node_config["num-partitions"]) == len(supernodes)
        assert node_config["state-dir"] == "'/app/state'"
        # a crashed client comes back by itself (and picks up its labels from its state)
        assert found[supernode]["restart"] == found[f"clientapp-{index}"]["restart"] == "on-failure"
        partitions.add(node_config["partition-id"])
        ports.add(flag(command, "port"))
        executor = found[f"clientapp-{index}"]
        assert executor["image"] == found["serverapp"]["image"] == "maskedoptim-superexec:0.1.0"
        assert flag(executor["command"], "runtime-api-address") == (
            f"{supernode}:{flag(command, 'port')}"
        )
        mounts = {v.split(":")[1]: v.split(":")[0] for v in executor["volumes"]}
        assert set(mounts) == {"/app/data", "/app/state"}
        volumes |= set(mounts.values())
        gpus = executor["deploy"]["resources"]["reservations"]["devices"]
        assert gpus[0]["driver"] == "nvidia" and "gpu" in gpus[0]["capabilities"]
    assert len(partitions) == len(ports) == len(supernodes)  # distinct partition and port each
    assert len(volumes) == 2 * len(supernodes)  # its own data and state volumes each
    declared = set(yaml.safe_load((DOCKER / name).read_text())["volumes"])
    assert volumes <= declared


def test_the_tls_variant_encrypts_and_authenticates_every_link_to_the_superlink():
    found = services("compose.tls.yml")
    superlink = found["superlink"]["command"]
    assert "--insecure" not in superlink and "--enable-supernode-auth" in superlink
    for name in ("ssl-ca-certfile", "ssl-certfile", "ssl-keyfile"):
        assert flag(superlink, name)
    assert "--insecure" not in found["serverapp"]["command"]
    keys = set()
    for supernode in (s for s in found if s.startswith("supernode-")):
        command = found[supernode]["command"]
        assert "--insecure" not in command
        assert flag(command, "root-certificates") == "/app/certs/ca.crt"
        keys.add(flag(command, "auth-supernode-private-key"))
    assert len(keys) == 2  # one key pair per client
