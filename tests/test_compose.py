"""docker-compose.yml: it validates, and it has the parts a deployment needs.

There is no Docker engine here; `docker compose config` (or docker-compose
v1) parses, interpolates and validates the file without one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.cli import worker_command
from server.config import Settings
from server.queue import make_celery as queue_app
from server.queue import worker_queues

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
TOKEN = "compose-test-token"


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) when it works, else `docker-compose`."""
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


COMPOSE = compose_command()
pytestmark = pytest.mark.skipif(
    COMPOSE is None,
    reason="no compose binary (install docker-compose or the docker compose plugin)",
)


def compose(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run compose on our file with a clean VSML_*/POSTGRES_* environment."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("VSML_", "POSTGRES_"))}  # fmt: skip
    assert COMPOSE is not None
    return subprocess.run(
        [*COMPOSE, "--file", str(COMPOSE_FILE), "--project-name", "vsml-test",
         *args],
        capture_output=True, text=True, timeout=60, env={**clean, **env},
        cwd=ROOT,
    )  # fmt: skip


def compose_file(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Compose on another file of ours, alone."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("VSML_", "POSTGRES_"))}  # fmt: skip
    assert COMPOSE is not None
    return subprocess.run(
        [*COMPOSE, "--file", str(ROOT / name), "--project-name", "vsml-test", *args],
        capture_output=True, text=True, timeout=60, env={**clean, **env}, cwd=ROOT,
    )  # fmt: skip


def config_with(profile: str, **env: str) -> dict[str, Any]:
    result = compose("--profile", profile, "config", VSML_API_TOKEN=TOKEN, **env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def config(**env: str) -> dict[str, Any]:
    return config_with("gpu1", **env)


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The whole file as compose resolves it, every profile included."""
    return config()


@pytest.fixture(scope="module")
def services(resolved) -> dict[str, dict[str, Any]]:
    return resolved["services"]


def workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if name.startswith("worker")}


def environment(service: dict[str, Any]) -> dict[str, str]:
    """Compose prints a mapping or a list of NAME=value; give a mapping."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """{target: volume name} of a service's named-volume mounts."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        out[target] = source
    return out


def test_config_validates_with_a_token() -> None:
    """`compose config -q` accepts the file when VSML_API_TOKEN is set."""
    result = compose("config", "-q", VSML_API_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr


def test_config_refuses_without_a_token() -> None:
    """Without VSML_API_TOKEN the file does not resolve, and says why."""
    result = compose("config", "-q")
    assert result.returncode != 0
    assert "VSML_API_TOKEN" in result.stderr


def test_redis_appends_and_fsyncs_every_second(services) -> None:
    """Redis keeps an append-only file, fsynced every second, on a volume."""
    command = services["redis"]["command"]
    if isinstance(command, str):
        command = command.split()
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert mounts(services["redis"])["/data"] == "redis-data"


def gpu_workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The one-GPU workers (worker-gpu01, a two-GPU group, replaces two)."""
    return {n: s for n, s in workers(services).items()
            if n not in ("worker-cpu", "worker-gpu01")}  # fmt: skip


def test_each_worker_reserves_its_own_gpu(services) -> None:
    """Every GPU worker reserves one distinct NVIDIA GPU and sees it as device
    0; the CPU worker sees none."""
    assert environment(services["worker-cpu"])["CUDA_VISIBLE_DEVICES"] == ""
    assert "deploy" not in services["worker-cpu"]
    reserved = []
    for name, service in gpu_workers(services).items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, name
        assert devices[0]["driver"] == "nvidia", name
        assert "gpu" in devices[0]["capabilities"], name
        assert len(devices[0]["device_ids"]) == 1, name
        reserved += devices[0]["device_ids"]
        assert environment(service)["CUDA_VISIBLE_DEVICES"] == "0", name
    assert len(reserved) >= 2
    assert len(set(reserved)) == len(reserved)


def test_workers_serve_the_queues_of_their_gpus(services) -> None:
    """worker-cpu takes CPU runs, each GPU worker runs asking for its GPUs;
    `vsml-lab worker` runs one solo Celery process with prefetch 1."""
    assert services["worker-cpu"]["command"] == ["vsml-lab", "worker", "--gpus", "0"]
    for name, service in gpu_workers(services).items():
        assert service["command"] == ["vsml-lab", "worker", "--gpus", "1"], name
    command = " ".join(worker_command("runs"))
    assert "--pool=solo" in command and "--concurrency=1" in command
    assert queue_app(Settings()).conf.worker_prefetch_multiplier == 1


def test_a_two_gpu_group_worker_takes_runs_over_two_gpus() -> None:
    group = config_with("gpu01")["services"]["worker-gpu01"]
    assert group["command"] == ["vsml-lab", "worker", "--gpus", "2"]
    devices = group["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["device_ids"] == ["0", "1"]
    assert environment(group)["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert worker_queues("runs", 2, cpu_runs=False) == ["runs.gpu1", "runs.gpu2"]


def test_head_file_publishes_database_and_broker_to_the_cluster() -> None:
    result = compose("--file", str(ROOT / "docker-compose.head.yml"), "config",
                     VSML_API_TOKEN=TOKEN, VSML_HEAD_BIND="10.1.2.3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert published(services["postgres"]) == [("10.1.2.3", "5432")]
    assert published(services["redis"]) == [("10.1.2.3", "6379")]
    assert "ports" not in config()["services"]["postgres"]  # not without it


def test_node_file_runs_a_host_network_worker_of_the_head() -> None:
    env = {"VSML_HEAD": "10.1.2.3", "VSML_NODE_ADDRESS": "10.1.2.4",
           "VSML_WORKER_GPUS": "8"}  # fmt: skip
    result = compose_file("docker-compose.node.yml", "config", **env)
    assert result.returncode == 0, result.stderr
    worker = yaml.safe_load(result.stdout)["services"]["node-worker"]
    assert worker["network_mode"] == "host"  # others reach its rendezvous port
    settings = environment(worker)
    assert settings["VSML_DATABASE_URL"].endswith("@10.1.2.3:5432/vsml")
    assert settings["VSML_BROKER_URL"] == "redis://10.1.2.3:6379/0"
    assert settings["VSML_NODE_ADDRESS"] == "10.1.2.4"
    missing = compose_file("docker-compose.node.yml", "config", VSML_HEAD="h")
    assert missing.returncode != 0 and "VSML_NODE_ADDRESS" in missing.stderr


def test_api_and_workers_share_artifacts_and_settings(services) -> None:
    """API and workers mount one artefact volume and use one database/broker."""
    api = environment(services["api"])
    folder = api["VSML_ARTIFACT_DIR"]
    assert api["VSML_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert api["VSML_BROKER_URL"].startswith("redis://redis:")
    for name, service in [("api", services["api"]), *workers(services).items()]:
        assert mounts(service)[folder] == "artifacts", name
        env = environment(service)
        for key in ("VSML_ARTIFACT_DIR", "VSML_DATABASE_URL", "VSML_BROKER_URL"):
            assert env[key] == api[key], (name, key)


def test_named_volumes_hold_the_state(resolved, services) -> None:
    """The database, the broker and the artefacts live on named volumes."""
    assert set(resolved["volumes"]) >= {"postgres-data", "redis-data", "artifacts"}
    database = mounts(services["postgres"])
    assert database["/var/lib/postgresql/data"] == "postgres-data"


def test_services_have_healthchecks(services) -> None:
    """postgres, redis and the api report health; the api waits for both."""
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert "/health" in " ".join(services["api"]["healthcheck"]["test"])
    depends = services["api"]["depends_on"]
    for name in ("postgres", "redis"):
        assert depends[name]["condition"] == "service_healthy"


def test_api_migrates_then_serves_with_the_token(services) -> None:
    """The api migrates first, listens on all container interfaces, needs a token."""
    api = services["api"]
    command = " ".join(api["command"])
    assert command.index("vsml-lab migrate") < command.index("vsml-lab api")
    env = environment(api)
    assert env["VSML_HOST"] == "0.0.0.0"
    assert env["VSML_API_TOKEN"] == TOKEN


def published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, host port) of each published port."""
    out = []
    for port in service["ports"]:
        if isinstance(port, str):
            address, host_port = port.split(":")[:2]
        else:
            address, host_port = port.get("host_ip", ""), str(port["published"])
        out.append((address, host_port))
    return out


def test_api_is_published_on_loopback_by_default(services) -> None:
    """The host publishes the API on 127.0.0.1 unless told otherwise."""
    assert published(services["api"]) == [("127.0.0.1", "8000")]


def test_published_address_and_port_are_configurable() -> None:
    """VSML_PUBLISH_ADDRESS and VSML_PUBLISH_PORT move the published port."""
    api = config(VSML_PUBLISH_ADDRESS="0.0.0.0", VSML_PUBLISH_PORT="9000")
    assert published(api["services"]["api"]) == [("0.0.0.0", "9000")]
