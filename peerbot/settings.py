"""Settings for each part of Peerbot, read from the environment (and a ``.env`` file on one machine).

Each part has one settings object whose field names are the environment variable names of DESIGN.md and
of the Helm values, lower-cased. Values are passed explicitly from here into the code; nothing else reads
``os.environ``. A missing or malformed setting stops start-up with one line per problem, naming the
variable and how to fix it (:class:`SettingsError`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from peerbot import constants

T = TypeVar("T", bound="PeerbotSettings")

#: Kubernetes quantities: "2000m", "2", "4Gi", "512Mi".
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


class SettingsError(Exception):
    """A setting is missing or malformed; the message says which and how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _hint(text: str) -> Any:
    """Attach the fix for a setting to its field, for :func:`load_settings` to print."""
    return {"hint": text}


class PeerbotSettings(BaseSettings):
    """What every part shares: logging, namespace, maintenance switch."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", json_schema_extra=_hint("set LOG_LEVEL to DEBUG, INFO, WARNING or ERROR")
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        json_schema_extra=_hint("set LOG_FORMAT to json, console, or auto (JSON unless on a terminal)"),
    )
    peerbot_namespace: str | None = Field(
        default=None,
        json_schema_extra=_hint(
            "set PEERBOT_NAMESPACE to a Kubernetes namespace, or leave it unset to use the pod's own"
        ),
    )
    peerbot_maintenance: bool = Field(
        default=False, json_schema_extra=_hint("set PEERBOT_MAINTENANCE to true or false")
    )
    metrics_auth_token: SecretStr | None = Field(
        default=None,
        json_schema_extra=_hint(
            "set METRICS_AUTH_TOKEN to a long random string that Prometheus sends as a bearer token, "
            "or unset it to leave /metrics open"
        ),
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class SlackSettings(PeerbotSettings):
    """How to reach Slack; shared by the dispatcher and the worker."""

    slack_bot_token: SecretStr = Field(
        json_schema_extra=_hint(
            "set SLACK_BOT_TOKEN to the bot token (xoxb-...) from your Slack app's 'OAuth & Permissions' page"
        )
    )
    slack_api_url: str = Field(
        default="https://slack.com/api/",
        json_schema_extra=_hint("set SLACK_API_URL to the Web API base URL, ending in /api/"),
    )
    slack_trigger_phrase: str = Field(
        default=constants.DEFAULT_TRIGGER_PHRASE,
        min_length=1,
        json_schema_extra=_hint("set SLACK_TRIGGER_PHRASE to the phrase that calls Peerbot, e.g. @peerbotai"),
    )

    enable_status_reactions: bool = Field(
        default=True,
        json_schema_extra=_hint(
            "set ENABLE_STATUS_REACTIONS to true or false (👀 ⚙️ ✅ ❌ ⏳ on the message)"
        ),
    )
    enable_progress_updates: bool = Field(
        default=True,
        json_schema_extra=_hint(
            "set ENABLE_PROGRESS_UPDATES to true or false (live edits of the status message)"
        ),
    )

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("a bot token starts with xoxb-")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"


class DispatcherSettings(SlackSettings):
    """The dispatcher: Slack events in, Conversations out."""

    slack_app_token: SecretStr | None = Field(
        default=None,
        json_schema_extra=_hint(
            "set SLACK_APP_TOKEN to an app-level token (xapp-...) with connections:write for Socket Mode, "
            "or unset it and set SLACK_SIGNING_SECRET for HTTP mode"
        ),
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None,
        json_schema_extra=_hint(
            "set SLACK_SIGNING_SECRET from your Slack app's 'Basic Information' page (HTTP mode)"
        ),
    )
    port: int = Field(
        default=constants.DEFAULT_PORT,
        ge=1,
        le=65535,
        json_schema_extra=_hint("set PORT to a TCP port number"),
    )
    allow_direct_messages: bool = Field(
        default=True, json_schema_extra=_hint("set ALLOW_DIRECT_MESSAGES to true/false")
    )
    allow_private_channels: bool = Field(
        default=False, json_schema_extra=_hint("set ALLOW_PRIVATE_CHANNELS to true/false")
    )
    rate_limit_per_minute: int = Field(
        default=constants.DEFAULT_RATE_LIMIT_PER_MINUTE,
        ge=1,
        json_schema_extra=_hint("set RATE_LIMIT_PER_MINUTE to a whole number of requests, at least 1"),
    )
    trusted_rate_limit_per_minute: int = Field(
        default=60,
        ge=1,
        json_schema_extra=_hint(
            "set TRUSTED_RATE_LIMIT_PER_MINUTE to a whole number of requests, at least 1"
        ),
    )
    trusted_users: str = Field(
        default="",
        json_schema_extra=_hint("set TRUSTED_USERS to Slack user ids separated by commas (U0123,U0456)"),
    )
    allowed_users: str = Field(
        default="",
        json_schema_extra=_hint("set ALLOWED_USERS to Slack user ids separated by commas, or leave it empty"),
    )
    allowed_channels: str = Field(
        default="",
        json_schema_extra=_hint(
            "set ALLOWED_CHANNELS to Slack channel ids separated by commas, or leave it empty"
        ),
    )
    follow_up_without_mention: bool = Field(
        default=True, json_schema_extra=_hint("set FOLLOW_UP_WITHOUT_MENTION to true/false")
    )
    redis_url: SecretStr | None = Field(
        default=None,
        json_schema_extra=_hint("set REDIS_URL to redis://host:6379/0 (shared rate limits), or unset it"),
    )
    record_timeout_seconds: float = Field(
        default=1.5,
        gt=0,
        le=2.5,
        json_schema_extra=_hint("set RECORD_TIMEOUT_SECONDS to seconds (over 0, at most 2.5: Slack waits 3)"),
    )
    github_organization: str = Field(
        default=constants.DEFAULT_GITHUB_ORGANIZATION,
        json_schema_extra=_hint("set GITHUB_ORGANIZATION to a GitHub organization name"),
    )
    session_timeout_minutes: int = Field(
        default=constants.DEFAULT_SESSION_TIMEOUT_MINUTES,
        ge=1,
        le=24 * 60,
        json_schema_extra=_hint("set SESSION_TIMEOUT_MINUTES to a whole number of minutes, 1 to 1440"),
    )

    @field_validator("trusted_users", "allowed_users", "allowed_channels")
    @classmethod
    def _slack_id_list(cls, value: str) -> str:
        ids = [item.strip() for item in value.split(",") if item.strip()]
        bad = [item for item in ids if not re.match(r"^[A-Z0-9]+$", item)]
        if bad:
            raise ValueError(f"not Slack ids: {', '.join(bad[:3])} (ids look like U0123ABCD or C0123ABCD)")
        return ",".join(ids)

    def id_set(self, name: str) -> frozenset[str]:
        """``trusted_users``, ``allowed_users`` or ``allowed_channels`` as a set of ids."""
        value = getattr(self, name)
        return frozenset(item for item in str(value).split(",") if item)

    @field_validator("slack_app_token")
    @classmethod
    def _app_token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("an app-level token starts with xapp-")
        return value

    def check_mode(self) -> None:
        """Socket Mode needs the app token, HTTP mode the signing secret: one of the two must be set."""
        if self.slack_app_token is None and self.slack_signing_secret is None:
            raise SettingsError(
                [
                    "SLACK_APP_TOKEN is missing: Socket Mode needs an app-level token (xapp-...) with "
                    "connections:write; or set SLACK_SIGNING_SECRET to receive events over HTTP instead"
                ]
            )


class OperatorSettings(SlackSettings):
    """The operator: Conversations in, worker Jobs out (and failures it sees told in the thread)."""

    worker_image: str = Field(
        default="ghcr.io/peerbot-ai/peerbot-worker:latest",
        min_length=1,
        json_schema_extra=_hint("set WORKER_IMAGE to the worker image reference"),
    )
    worker_service_account: str = Field(
        default="peerbot-worker",
        json_schema_extra=_hint("set WORKER_SERVICE_ACCOUNT to the workers' ServiceAccount"),
    )
    worker_secret_name: str = Field(
        default="peerbot-secrets",
        json_schema_extra=_hint("set WORKER_SECRET_NAME to the Secret holding the workers' tokens"),
    )
    session_timeout_minutes: int = Field(
        default=constants.DEFAULT_SESSION_TIMEOUT_MINUTES,
        ge=1,
        le=24 * 60,
        json_schema_extra=_hint("set SESSION_TIMEOUT_MINUTES to a whole number of minutes, 1 to 1440"),
    )
    worker_cpu: str = Field(
        default=constants.DEFAULT_WORKER_CPU,
        json_schema_extra=_hint("set WORKER_CPU to a Kubernetes CPU quantity such as 2000m or 2"),
    )
    worker_memory: str = Field(
        default=constants.DEFAULT_WORKER_MEMORY,
        json_schema_extra=_hint("set WORKER_MEMORY to a Kubernetes memory quantity such as 4Gi or 512Mi"),
    )
    max_concurrent_jobs: int = Field(
        default=0,
        ge=0,
        json_schema_extra=_hint("set MAX_CONCURRENT_JOBS to a whole number (0 means no limit)"),
    )
    worker_config_map: str | None = Field(
        default=None,
        json_schema_extra=_hint(
            "set WORKER_CONFIG_MAP to the ConfigMap with the workers' non-secret settings"
        ),
    )
    worker_spot: bool = Field(
        default=False, json_schema_extra=_hint("set WORKER_SPOT to true to run workers on Spot")
    )
    job_ttl_seconds: int = Field(
        default=3600, ge=0, json_schema_extra=_hint("set JOB_TTL_SECONDS to how long finished Jobs are kept")
    )
    conversation_retention_days: float = Field(
        default=30,
        gt=0,
        json_schema_extra=_hint("set CONVERSATION_RETENTION_DAYS to how long idle Conversations are kept"),
    )
    operator_port: int = Field(
        default=constants.DEFAULT_OPERATOR_PORT,
        ge=0,
        le=65535,
        json_schema_extra=_hint("set OPERATOR_PORT to a TCP port number (0: any free port, for tests)"),
    )
    # The warm pool (docs/warm-workers.md): idle worker pods a turn claims instead of waiting for a Job.
    worker_pool_size: int = Field(
        default=0,
        ge=0,
        le=1000,
        json_schema_extra=_hint("set WORKER_POOL_SIZE to the idle worker pods to keep (0: no pool)"),
    )
    worker_pool_min: int | None = Field(
        default=None,
        ge=0,
        json_schema_extra=_hint(
            "set WORKER_POOL_MIN to the fewest idle pods (at most WORKER_POOL_SIZE), or unset it"
        ),
    )
    worker_pool_max: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        json_schema_extra=_hint(
            "set WORKER_POOL_MAX to the most idle pods (at least WORKER_POOL_SIZE), or unset it"
        ),
    )
    worker_pool_max_idle_minutes: float = Field(
        default=30,
        gt=0,
        le=24 * 60,
        json_schema_extra=_hint(
            "set WORKER_POOL_MAX_IDLE_MINUTES to the minutes an idle pod may wait (over 0, at most 1440)"
        ),
    )
    worker_pool_port: int = Field(
        default=8090,
        ge=1,
        le=65535,
        json_schema_extra=_hint("set WORKER_POOL_PORT to the idle workers' claim port"),
    )
    operator_pod_name: str | None = Field(
        default=None,
        json_schema_extra=_hint("set OPERATOR_POD_NAME to the operator's pod name (the downward API)"),
    )
    operator_pod_uid: str | None = Field(
        default=None,
        json_schema_extra=_hint("set OPERATOR_POD_UID to the operator's pod uid (the downward API)"),
    )

    @field_validator("worker_pool_min")
    @classmethod
    def _pool_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        size = info.data.get("worker_pool_size")
        if value is not None and size is not None and value > size:
            raise ValueError(f"the fewest idle pods cannot be more than WORKER_POOL_SIZE ({size})")
        return value

    @field_validator("worker_pool_max")
    @classmethod
    def _pool_max(cls, value: int | None, info: ValidationInfo) -> int | None:
        size = info.data.get("worker_pool_size")
        if value is not None and size is not None and value < size:
            raise ValueError(f"the most idle pods cannot be fewer than WORKER_POOL_SIZE ({size})")
        return value

    @field_validator("worker_cpu", "worker_memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError("not a Kubernetes quantity")
        return value


class WorkerSettings(SlackSettings):
    """The worker: one turn of Claude on the user's repository."""

    anthropic_api_key: SecretStr = Field(
        json_schema_extra=_hint("set ANTHROPIC_API_KEY to an API key from console.anthropic.com (sk-ant-...)")
    )
    anthropic_base_url: str | None = Field(
        default=None,
        json_schema_extra=_hint("set ANTHROPIC_BASE_URL to the Messages API base URL, or unset it"),
    )
    anthropic_model: str = Field(
        default=constants.DEFAULT_MODEL,
        min_length=1,
        json_schema_extra=_hint("set ANTHROPIC_MODEL to a model name"),
    )
    anthropic_summary_model: str = Field(
        default=constants.DEFAULT_SUMMARY_MODEL,
        min_length=1,
        json_schema_extra=_hint("set ANTHROPIC_SUMMARY_MODEL to the model that writes compaction summaries"),
    )
    repository_host: Literal["github", "local"] = Field(
        default="github",
        json_schema_extra=_hint(
            "set REPOSITORY_HOST to github, or to local for bare git repositories in REPOSITORIES_DIR"
        ),
    )
    repositories_dir: Path = Field(
        default=Path("repositories"),
        json_schema_extra=_hint(
            "set REPOSITORIES_DIR to the folder of bare git repositories (used when REPOSITORY_HOST=local)"
        ),
    )
    # Declared after repository_host: its check reads the host. Needed only when the host is GitHub.
    github_token: SecretStr = Field(
        default=SecretStr(""),
        validate_default=True,
        json_schema_extra=_hint(
            "set GITHUB_TOKEN to a token with repository access to GITHUB_ORGANIZATION "
            "(GitHub: Settings > Developer settings > Personal access tokens), or set "
            "REPOSITORY_HOST=local to keep repositories in local git instead"
        ),
    )
    github_api_url: str = Field(
        default="https://api.github.com",
        json_schema_extra=_hint(
            "set GITHUB_API_URL to the REST API base (GitHub Enterprise: https://HOST/api/v3)"
        ),
    )
    github_organization: str = Field(
        default=constants.DEFAULT_GITHUB_ORGANIZATION,
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$",
        json_schema_extra=_hint("set GITHUB_ORGANIZATION to a GitHub organization name"),
    )
    gcs_bucket_name: str = Field(
        default=constants.DEFAULT_GCS_BUCKET_NAME,
        pattern=r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$",
        json_schema_extra=_hint("set GCS_BUCKET_NAME to the bucket that holds sessions"),
    )
    storage_emulator_host: str | None = Field(
        default=None, json_schema_extra=_hint("set STORAGE_EMULATOR_HOST to http://host:port, or unset it")
    )
    session_store: Literal["gcs", "local"] = Field(
        default="gcs", json_schema_extra=_hint("set SESSION_STORE to gcs or local")
    )
    session_dir: Path = Field(
        default=Path("sessions"), json_schema_extra=_hint("set SESSION_DIR to a folder for local sessions")
    )
    session_timeout_minutes: int = Field(
        default=constants.DEFAULT_SESSION_TIMEOUT_MINUTES,
        ge=1,
        le=24 * 60,
        json_schema_extra=_hint("set SESSION_TIMEOUT_MINUTES to a whole number of minutes, 1 to 1440"),
    )
    session_token_budget: int = Field(
        default=constants.DEFAULT_SESSION_TOKEN_BUDGET,
        ge=1000,
        json_schema_extra=_hint("set SESSION_TOKEN_BUDGET to a whole number of tokens, at least 1000"),
    )
    peerbot_result_file: Path = Field(
        default=Path(constants.DEFAULT_RESULT_FILE),
        json_schema_extra=_hint("set PEERBOT_RESULT_FILE to the file the outcome is written to"),
    )
    workspace_dir: Path = Field(
        default=Path("/workspace"),
        json_schema_extra=_hint("set WORKSPACE_DIR to a writable folder for the clone and attachments"),
    )
    pause_margin_seconds: float = Field(
        default=30.0,
        ge=0,
        le=600,
        json_schema_extra=_hint("set PAUSE_MARGIN_SECONDS to the seconds kept before the deadline to pause"),
    )
    max_tool_calls_per_turn: int = Field(
        default=60,
        ge=1,
        le=1000,
        json_schema_extra=_hint("set MAX_TOOL_CALLS_PER_TURN to a whole number, 1 to 1000"),
    )
    tool_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        json_schema_extra=_hint("set TOOL_TIMEOUT_SECONDS to the seconds one bash command may run"),
    )
    tool_output_limit: int = Field(
        default=30_000,
        ge=1000,
        json_schema_extra=_hint("set TOOL_OUTPUT_LIMIT to the characters of tool output shown to Claude"),
    )
    anthropic_max_tokens: int = Field(
        default=8192,
        ge=256,
        json_schema_extra=_hint("set ANTHROPIC_MAX_TOKENS to the output token limit of one model step"),
    )

    @field_validator("anthropic_api_key")
    @classmethod
    def _anthropic_key_shape(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("empty")
        return value

    @field_validator("github_token")
    @classmethod
    def _github_token_for_github(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        # A malformed REPOSITORY_HOST is reported on its own; only a GitHub host needs the token.
        if info.data.get("repository_host") == "github" and not value.get_secret_value().strip():
            raise PydanticCustomError("missing", "Field required")
        return value


def _describe(settings_cls: type[PeerbotSettings], error: Mapping[str, Any]) -> str:
    """One line for one validation error: the variable, what is wrong, how to fix it. Never the value."""
    field_name = str(error["loc"][0]) if error.get("loc") else "?"
    env_name = field_name.upper()
    field = settings_cls.model_fields.get(field_name)
    extra = field.json_schema_extra if field is not None else None
    hint = extra.get("hint") if isinstance(extra, dict) else None
    fix = f": {hint}" if hint else ""
    if error.get("type") == "missing":
        return f"{env_name} is missing{fix}"
    reason = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{env_name} is not valid ({reason}){fix}"


def load_settings(settings_cls: type[T], **overrides: Any) -> T:
    """Read ``settings_cls`` from the environment, turning validation errors into :class:`SettingsError`.

    ``overrides`` take precedence over the environment (tests and the demo pass values this way).
    """
    try:
        return settings_cls(**overrides)
    except ValidationError as error:
        problems = [_describe(settings_cls, e) for e in error.errors(include_input=False)]
        raise SettingsError(problems) from None
