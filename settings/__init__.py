"""casesync's configuration: one typed object read from ``CASESYNC_*`` variables and ``.env``.

Only entry points (the CLI, the Celery app) call :func:`load_settings`; everything else receives
the settings, or the values it needs, as arguments.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CASESYNC_"

#: The default of ``CASESYNC_REPLYTO_PATTERN``: a namespace, a colon, a name, in printable ASCII
#: without spaces (``billing:case-results``). It already excludes every key casesync, Celery and
#: kombu use (no colon, a leading ``_``, or a leading ``casesync``/``celery``), which are refused
#: whatever the pattern says. No ``|``: the README's table shows the default as it is.
REPLYTO_PATTERN = r"(?!casesync)(?!celery)[A-Za-z0-9][A-Za-z0-9_.-]{0,63}:[!-~]{1,190}"


class SettingsError(Exception):
    """A setting has a bad value; the message names the variable in one line."""


class Settings(BaseSettings):
    """Every setting of casesync. Each field's description is the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # Connections
    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis or Valkey for the Celery broker and the streams "
        "(`redis://`, `rediss://` for TLS, `redis+sentinel://`; a password in the URL works).",
    )
    redis_sentinel_master: str = Field(
        "mymaster", description="Master name, when `CASESYNC_REDIS_URL` lists sentinels."
    )
    thalamus_url: AnyHttpUrl | None = Field(
        None, description="Base URL of the Thalamus server (required by `worker`)."
    )
    thalamus_touchpoint: str | None = Field(
        None, description="Touchpoint code, sent as `Thalamus-Touchpoint`."
    )
    thalamus_token: SecretStr | None = Field(
        None, description="Touchpoint token, sent as `Thalamus-Token` (secret)."
    )
    thalamus_principal: str | None = Field(
        None, description="Operator principal, for servers that need a login."
    )
    thalamus_password: SecretStr | None = Field(
        None, description="Operator password, for servers that need a login (secret)."
    )
    secrets_dir: Path | None = Field(
        None,
        description="Folder of secret files (Docker/Kubernetes secrets): a file named "
        "`thalamus_token` or `thalamus_password` there supplies that secret.",
    )

    # Streams
    events_stream: str = Field("casesync:events", description="Stream upstream services write to.")
    results_stream: str = Field("casesync:results", description="Stream of outcome events.")
    dead_letter_stream: str = Field(
        "casesync:dead-letter", description="Stream of events that could not be applied."
    )
    results_max_length: int = Field(
        1_000_000,
        ge=1000,
        description="Approximate length past which the oldest outcome events are trimmed "
        "(the dead-letter stream is never trimmed).",
    )
    consumer_group: str = Field(
        "casesync", description="Consumer group of the workers on the events stream."
    )
    outcome_source: str = Field("casesync", description="`source` of the outcome events.")
    task_queue: str = Field("casesync", description="Celery queue of the update tasks.")

    # Thalamus time-outs (seconds)
    connect_timeout: float = Field(5.0, gt=0, description="Time-out to connect to Thalamus.")
    read_timeout: float = Field(30.0, gt=0, description="Time-out to read a Thalamus response.")
    write_timeout: float = Field(30.0, gt=0, description="Time-out to send a Thalamus request.")
    pool_timeout: float = Field(
        5.0, gt=0, description="Time-out to get a connection from the HTTP pool."
    )
    redis_timeout: float = Field(10.0, gt=0, description="Time-out of one Redis command.")
    redis_wait_replicas: int = Field(
        1,
        ge=0,
        le=16,
        description="Replicas that must confirm a batch's attempt marks (`WAIT`) before its "
        "updates are sent, so a fail-over cannot lose them; 0 = no `WAIT` (README, Redis "
        "fail-over).",
    )
    redis_wait_timeout: float = Field(
        0.1,
        gt=0,
        le=5,
        description="Seconds a batch waits for that confirmation; unconfirmed, the updates go "
        "out all the same and `WAIT` is tried again after 30 s (doubling up to 10 min).",
    )

    # Retries
    max_attempts: int = Field(
        8, ge=1, le=100, description="Attempts of one event before `retriesExhausted`."
    )
    max_event_age: float = Field(
        86400.0,
        gt=0,
        description="Seconds after its first attempt past which an event is not retried again.",
    )
    retry_base_delay: float = Field(
        1.0, gt=0, description="First retry delay in seconds; doubles each attempt (full jitter)."
    )
    retry_max_delay: float = Field(
        300.0, gt=0, description="Longest retry delay in seconds, `Retry-After` included."
    )
    visibility_timeout: float = Field(
        60.0,
        gt=0,
        description="Lease of the events a task works on: a running task renews it every third "
        "of this; once it runs out (the worker died, froze or lost Redis) the events go to "
        "another worker. Must exceed `CASESYNC_REDIS_TIMEOUT`.",
    )

    # Throughput
    concurrency: int = Field(
        32,
        ge=1,
        le=1024,
        description="Updates one worker process runs at once (threads its batches share).",
    )
    batches: int = Field(
        4,
        ge=1,
        le=64,
        description="Batches one worker runs at once (its Celery pool's concurrency; "
        "processes under prefork, each with `CASESYNC_CONCURRENCY` threads).",
    )
    pool: Literal["threads", "prefork", "solo"] = Field(
        "threads", description="Celery pool of `casesync worker` (see README for the choice)."
    )
    intake_batch: int = Field(
        100,
        ge=1,
        le=1000,
        description="Most events in one batch: one intake read, one task.",
    )
    intake_backlog: int = Field(
        0,
        ge=0,
        description="Queued batches past which intake stops reading; 0 means `CASESYNC_BATCHES`.",
    )
    task_events: bool = Field(
        False,
        description="Workers send task events from their start; when false, Flower turns them "
        "on within 5 s of its own start (see README, Monitoring).",
    )
    thalamus_max_rps: float = Field(
        0.0, ge=0, description="Requests per second to Thalamus across all workers; 0 = no cap."
    )

    # Exactly-once and order
    ledger_ttl: float = Field(
        7 * 86400.0, gt=0, description="Seconds an applied event's `(source, id)` is remembered."
    )
    case_lock_ttl: float = Field(
        30.0,
        gt=0,
        description="Seconds a per-case lock outlives a worker that died holding it "
        "(a running task renews it).",
    )
    max_deliveries: int = Field(
        5, ge=1, description="Deliveries of one stream entry before it is `poisonEvent`."
    )
    claim_idle: float = Field(
        60.0, gt=0, description="Seconds an entry sits with a dead consumer before others claim it."
    )

    # Circuit breaker
    breaker_threshold: int = Field(
        5, ge=1, description="Consecutive connection errors or 5xx that open the breaker."
    )
    breaker_probe_interval: float = Field(
        5.0, gt=0, description="Seconds between isAlive probes while the breaker is open."
    )

    # Input limits
    max_event_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest `event` JSON accepted, in bytes."
    )
    max_comments: int = Field(100, ge=0, description="Most comments in one event.")
    max_case_data_fields: int = Field(200, ge=0, description="Most `caseData` fields in one event.")
    max_clock_skew: float = Field(
        300.0,
        ge=0,
        description="Seconds an event's `time` may lie ahead of the worker's clock; an event "
        "further in the future is `invalidEvent` (it would supersede every real change).",
    )
    replyto_pattern: str = Field(
        REPLYTO_PATTERN,
        description="Regular expression the whole `replyto` stream name must match. Keys that "
        "casesync, Celery or kombu use are refused whatever it says.",
    )

    # Operations
    log_json: bool = Field(False, description="Log one JSON object per line.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of a worker's Prometheus metrics; 0 = off."
    )
    trace_length: int = Field(
        200,
        ge=0,
        le=100_000,
        description="Records `casesync trace` keeps per case, newest first (one per arrival, "
        "retry, wait or outcome of an event); 0 turns tracing off.",
    )
    trace_ttl: float = Field(
        86400.0,
        ge=1,
        description="Seconds a case's trace is kept after its last record, and an event's "
        "`(source, id)` is found by `casesync trace --event` after it arrived.",
    )

    @field_validator(
        "thalamus_url",
        "thalamus_touchpoint",
        "thalamus_token",
        "thalamus_principal",
        "thalamus_password",
        "secrets_dir",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        # Compose files write CASESYNC_X=${X:-}: blank is unset, so a secret file still counts.
        return None if value == "" else value

    @field_validator("replyto_pattern")
    @classmethod
    def _is_a_regular_expression(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _read_secret_files(self) -> Self:
        if self.secrets_dir is None:
            return self
        for name in ("thalamus_token", "thalamus_password"):
            path = self.secrets_dir / name
            if getattr(self, name) is None and path.is_file():
                setattr(self, name, SecretStr(path.read_text(encoding="utf-8").strip()))
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_renewal(self) -> Self:
        # A running task renews its leases every third of the visibility time-out; a renewal
        # that waits out one slow Redis call must still land before the lease runs out, or the
        # events of a live task would go to another worker.
        if self.visibility_timeout <= self.redis_timeout:
            raise ValueError(
                f"{ENV_PREFIX}VISIBILITY_TIMEOUT ({self.visibility_timeout:g}) must exceed "
                f"{ENV_PREFIX}REDIS_TIMEOUT ({self.redis_timeout:g})"
            )
        return self

    @model_validator(mode="after")
    def _wait_within_a_redis_call(self) -> Self:
        # WAIT blocks its connection: a longer wait would read as Redis not answering.
        if self.redis_wait_timeout >= self.redis_timeout:
            raise ValueError(
                f"{ENV_PREFIX}REDIS_WAIT_TIMEOUT ({self.redis_wait_timeout:g}) must be shorter "
                f"than {ENV_PREFIX}REDIS_TIMEOUT ({self.redis_timeout:g})"
            )
        return self

    @property
    def effective_backlog(self) -> int:
        return self.intake_backlog or self.batches

    def masked(self) -> dict[str, object]:
        """The effective settings by variable name, secrets shown as ``**********``."""
        shown: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif name == "redis_url":
                value = redact_url(value)
            elif value is not None and not isinstance(value, (bool, int, float)):
                value = str(value)
            shown[ENV_PREFIX + name.upper()] = value
        return shown


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs and ``casesync config``."""
    if ";" in url:
        # A sentinel:// URL lists every Sentinel, each with the password.
        return ";".join(redact_url(part) for part in url.split(";"))
    parts = urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{user}:**********@{host}")
    # redis-py also takes the password as a query parameter: redis://host/0?password=...
    query = "&".join(
        "password=**********" if pair.split("=", 1)[0].lower() == "password" else pair
        for pair in parts.query.split("&")
    )
    return urlunsplit(parts._replace(query=query))


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation failure into one line that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not field:
        return f"invalid setting: {message}"
    return f"invalid setting {ENV_PREFIX}{field.upper()}: {message}"
