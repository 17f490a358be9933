"""The service's settings, read from the environment in one place."""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path("lab")


class Settings(BaseSettings):
    """Every knob of the service; environment variables prefixed `VSML_`."""

    model_config = SettingsConfigDict(env_prefix="VSML_", extra="ignore")

    # Where runs keep checkpoints and the embedded database and queue live.
    artifact_dir: Path = DEFAULT_HOME / "artifacts"
    # SQLAlchemy URL; empty means a SQLite file beside the artefacts.
    database_url: str = ""
    # Celery broker; empty means a file-system queue that needs no server.
    broker_url: str = ""
    # Celery queue runs go to; workers listen on it (`vsml-lab worker`).
    queue: str = Field(default="runs", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Required to bind anywhere but loopback; then every API call needs it.
    api_token: str = ""
    # Largest request body the API accepts, in bytes.
    max_body_bytes: int = 1_000_000
    # Seconds between the worker's checks for a cancel request.
    cancel_poll_s: float = 0.5
    # A training run's worker stamps it this often; a run unstamped for
    # lost_after_s lost its worker and is re-queued, at most max_attempts
    # starts in all (then it fails, naming each loss).
    heartbeat_s: float = Field(default=5.0, gt=0)
    lost_after_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # Redis hands an unacknowledged run to another worker after this long;
    # the run's claim makes such a second delivery a no-op (it is skipped).
    broker_visibility_s: float = Field(default=7 * 24 * 3600, gt=0)
    # What a worker gives its runs: GPUs (0: a CPU worker) and whether a
    # GPU worker also takes CPU runs; see server.queue.worker_queues.
    worker_gpus: int = Field(default=0, ge=0, le=1024)
    worker_cpu_runs: bool = False
    # The address other hosts reach this worker at, for runs over several
    # hosts (the first host of a run listens there for the others).
    node_address: str = Field(default_factory=socket.gethostname)
    # Mirror runs to Weights & Biases ("", "online" or "offline").
    wandb_mode: str = ""
    wandb_project: str = "vsml-lab"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.artifact_dir.parent / 'lab.db').resolve()}"

    @property
    def queue_dir(self) -> Path:
        return (self.artifact_dir.parent / "queue").resolve()

    @property
    def uses_local_broker(self) -> bool:
        return not self.broker_url


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse a reachable bind address without an API token."""
    if not is_loopback(settings.host) and not settings.api_token:
        raise ValueError(
            f"refusing to bind to {settings.host}: set VSML_API_TOKEN first "
            "(without a token the service only listens on 127.0.0.1)"
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
