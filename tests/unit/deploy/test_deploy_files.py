"""The service files in deploy/: the compose demo hangs together, the systemd units are valid.

``docker compose config`` and ``systemd-analyze verify`` run where they are installed; the
structural checks below run everywhere, so a broken file fails CI even without those tools.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hotlink.cli import app
from hotlink.tunnels import find_tunnels

ROOT = Path(__file__).parents[3]
DOCKER = ROOT / "deploy" / "docker"
SYSTEMD = ROOT / "deploy" / "systemd"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_CLUSTER = DOCKER / "compose.cluster.yaml"
HAPROXY_CFG = DOCKER / "haproxy.cfg"
RELAYS = ("relay1", "relay2", "relay3")
HOTLINK_SERVICES = ("relay", "alice", "bob", "tunnel-check")
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def interpolate(text: str) -> str:
    """``${NAME:-default}`` as compose fills it with NAME unset."""
    return _DEFAULTED.sub(lambda m: m.group(2), text)


def option(argv: list[str], name: str) -> str:
    """The value of ``--name=value`` or ``--name value`` in ``argv``."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return argv[i + 1]
    raise AssertionError(f"{name} not in {argv}")


def client_commands(service: dict[str, Any]) -> list[list[str]]:
    """The shell command of a client service, split at ``&&``."""
    assert service["entrypoint"] == ["sh", "-c"]
    [script] = service["command"]
    return [shlex.split(part) for part in script.split("&&")]


# ---------------------------------------------------------------- compose


def test_compose_starts_relay_coturn_two_clients_and_a_check() -> None:
    services = compose()["services"]
    assert set(services) == {"relay", "coturn", *HOTLINK_SERVICES}
    assert services["coturn"]["image"] == "coturn/coturn"
    for name in HOTLINK_SERVICES:
        build = services[name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert (context / "pyproject.toml").is_file(), f"{name}: build context {context}"
        assert (context / build["dockerfile"]).is_file()
    for name in ("alice", "bob"):
        depends = services[name]["depends_on"]
        assert depends["relay"]["condition"] == "service_healthy"
        assert "coturn" in depends
        assert "healthcheck" in services[name]
    check = services["tunnel-check"]
    assert check["restart"] == "no"
    assert {k: v["condition"] for k, v in check["depends_on"].items()} == {
        "alice": "service_healthy",
        "bob": "service_healthy",
    }
    [mount] = check["volumes"]
    source, target, _ = mount.split(":")
    assert (COMPOSE.parent / source).is_file() and check["entrypoint"][-1] == target
    named = {v.split(":")[0] for s in ("alice", "bob") for v in services[s]["volumes"]}
    assert named == set(compose()["volumes"])


def test_relay_and_coturn_share_the_turn_rest_secret() -> None:
    services = compose()["services"]
    relay_secret = option(services["relay"]["command"], "--turn-secret")
    coturn = services["coturn"]["command"]
    assert "--use-auth-secret" in coturn
    assert interpolate(relay_secret) == interpolate(option(coturn, "--static-auth-secret"))
    assert interpolate(relay_secret)
    advertised = services["relay"]["environment"]["SYFTBOX_HOTLINK_ICE_SERVERS"]
    port = option(coturn, "--listening-port")
    assert advertised.startswith(f"turn:coturn:{port}")


def test_clients_open_mirrored_tunnels_that_the_check_dials(tmp_path: Path) -> None:
    services = compose()["services"]
    listen: dict[str, int] = {}
    keys = set()
    for name in ("alice", "bob"):
        service = services[name]
        env = {k: interpolate(str(v)) for k, v in service["environment"].items()}
        assert env["SYFTBOX_SERVER_URL"] == "http://relay:8080"
        assert env["SYFTBOX_HOTLINK"] == "1"
        opening, running = client_commands(service)
        assert running == ["exec", "hotlink", "client"]
        assert opening[:3] == ["hotlink", "tunnel", "open"]
        # Run the command as the container does, into a scratch data dir.
        env["SYFTBOX_DATA_DIR"] = str(tmp_path / name)
        result = CliRunner().invoke(app, opening[1:], env=env)
        assert result.exit_code == 0, result.output
        [entry] = find_tunnels(tmp_path / name / "datasites", env["SYFTBOX_EMAIL"])
        assert entry.channel is not None
        keys.add(entry.channel.canonical_key)
        listen[name] = entry.channel.listen_port
    assert len(keys) == 1  # both sides run the same tunnel
    assert services["tunnel-check"]["command"][:2] == [
        f"alice:{listen['alice']}",
        f"bob:{listen['bob']}",
    ]


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker is not installed")
@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CLUSTER], ids=lambda p: p.name)
def test_docker_compose_config_accepts_the_file(path: Path) -> None:
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed (docker compose version failed)")
    done = subprocess.run(
        ["docker", "compose", "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- the cluster variant


def without(argv: list[str], *names: str) -> list[str]:
    """``argv`` less the ``--name=value`` options named."""
    return [a for a in argv if a.split("=", 1)[0] not in names]


def test_cluster_runs_three_relays_on_redis_with_distinct_node_ids() -> None:
    services = compose(COMPOSE_CLUSTER)["services"]
    single = compose()["services"]
    assert set(services) == {"redis", "lb", *RELAYS, "coturn", "alice", "bob", "tunnel-check"}
    assert services["redis"]["image"].startswith("redis:")
    assert "noeviction" in services["redis"]["command"]
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    node_ids = set()
    for name in RELAYS:
        relay = services[name]
        assert relay["build"] == single["relay"]["build"] and "ports" not in relay
        argv = relay["command"]
        assert option(argv, "--redis").startswith("redis://redis:6379/")
        node_ids.add(option(argv, "--node-id"))
        # Otherwise the single relay's flags and ICE advertisement, TURN secret included.
        assert without(argv, "--redis", "--node-id") == single["relay"]["command"]
        assert relay["environment"] == single["relay"]["environment"]
        assert relay["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/healthz" in " ".join(relay["healthcheck"]["test"])
    assert node_ids == set(RELAYS)
    assert services["coturn"] == single["coturn"]


def test_cluster_clients_reach_the_relays_through_the_balancer_only() -> None:
    services = compose(COMPOSE_CLUSTER)["services"]
    single = compose()["services"]
    lb = services["lb"]
    assert lb["image"].startswith("haproxy:")
    assert "8080:8080" in lb["ports"]
    [mount] = lb["volumes"]
    source, target, mode = mount.split(":")
    assert (COMPOSE_CLUSTER.parent / source).resolve() == HAPROXY_CFG
    assert target == "/usr/local/etc/haproxy/haproxy.cfg" and mode == "ro"
    assert {k: v["condition"] for k, v in lb["depends_on"].items()} == dict.fromkeys(
        RELAYS, "service_healthy"
    )
    for name in ("alice", "bob"):
        env = services[name]["environment"]
        assert env["SYFTBOX_SERVER_URL"] == "http://lb:8080"
        assert "lb" in services[name]["depends_on"]
        assert {k: v for k, v in env.items() if k != "SYFTBOX_SERVER_URL"} == {
            k: v for k, v in single[name]["environment"].items() if k != "SYFTBOX_SERVER_URL"
        }
        assert services[name]["command"] == single[name]["command"]
    assert services["tunnel-check"] == single["tunnel-check"]


def test_haproxy_balances_the_three_relays_with_health_checks() -> None:
    lines = [ln.split("#")[0].split() for ln in HAPROXY_CFG.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    servers = {ln[1]: ln[2] for ln in lines if ln[0] == "server"}
    assert servers == {name: f"{name}:8080" for name in RELAYS}
    assert ["bind", ":8080"] in lines
    assert ["mode", "tcp"] in lines and ["balance", "leastconn"] in lines
    assert ["option", "httpchk", "GET", "/healthz"] in lines
    assert ["http-check", "expect", "status", "200"] in lines
    # WebSockets live long: idle timeouts far above the clients' ping interval.
    assert ["timeout", "client", "1h"] in lines and ["timeout", "server", "1h"] in lines
    [defaults] = [ln for ln in lines if ln[0] == "default-server"]
    assert {"check", "inter", "fall", "rise"} <= set(defaults)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_config() -> None:
    # The relays' names do not resolve here: init-addr lets the check pass without them.
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runs_hotlink_as_a_user_from_python_slim() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.12-slim\s*$", text, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["hotlink"\]', text, re.MULTILINE)
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!src/"]


# ---------------------------------------------------------------- systemd


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text())
    return parser


@pytest.mark.parametrize("name", ["hotlink-relay.service", "hotlink-client@.service"])
def test_units_restart_on_failure_hardened_with_an_environment_file(name: str) -> None:
    service = unit(name)["Service"]
    assert service["ExecStart"].split()[0].endswith("/hotlink")
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] in ("strict", "full")
    assert service["EnvironmentFile"].startswith("/etc/hotlink/")
    assert service["CapabilityBoundingSet"] == ""
    assert unit(name)["Install"]["WantedBy"] == "multi-user.target"


def test_relay_runs_as_a_dynamic_user_and_client_as_its_instance() -> None:
    relay = unit("hotlink-relay.service")["Service"]
    assert relay["DynamicUser"] == "yes" and relay["ProtectHome"] == "yes"
    assert relay["ExecStart"].split()[1] == "server"
    client = unit("hotlink-client@.service")["Service"]
    assert client["User"] == "%i"
    assert client["ExecStart"].split()[1] == "client"
    assert client["Environment"] == "SYFTBOX_HOTLINK=1"
    # Local apps reach IPC sockets in /tmp: the client must share it.
    assert client.get("PrivateTmp", "no") == "no"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize(
    ("name", "verify_as"),
    [
        ("hotlink-relay.service", "hotlink-relay.service"),
        ("hotlink-client@.service", "hotlink-client@alice.service"),
    ],
)
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path, name: str, verify_as: str) -> None:
    # verify checks that ExecStart exists: point it at this hotlink, nothing else changes.
    hotlink = Path(sys.executable).with_name("hotlink")
    text = (SYSTEMD / name).read_text().replace("/opt/hotlink/bin/hotlink", str(hotlink))
    text = text.replace("EnvironmentFile=/", "EnvironmentFile=-/")
    (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / verify_as)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [ln for ln in (done.stdout + done.stderr).splitlines() if name.split("@")[0] in ln]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr
