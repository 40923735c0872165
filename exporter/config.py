"""The exporter's configuration: YAML validated into typed, immutable objects.

Every error names the file, the field path and what is expected, so that an operator can fix a
config without reading code. Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from exporter.kinds import DEFAULT_PROBES, KINDS, PROBE_KINDS

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
# A discovered target's name is its URL without the scheme (host, port and path prefix).
_DISCOVERED_NAME = re.compile(r"^[A-Za-z0-9\[][^\s\"'\\]{0,254}$")


class ConfigError(Exception):
    """A config that cannot be used; the message is meant for the operator, one problem a line."""


def parse_duration(value: Any) -> float:
    """'30s', '2m', '1h', '250ms' or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 2m or 500ms")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"expected a duration like 30s, 2m or 500ms, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Percent = Annotated[float, Field(gt=0, le=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebConfig(_Strict):
    """TLS and basic auth for the exporter's own endpoints (exporter-toolkit style)."""

    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    basic_auth_users: dict[str, str] = Field(default_factory=dict)  # user -> bcrypt hash
    # htpasswd-style USER:BCRYPT-HASH lines (e.g. a mounted Secret), read at load and at each reload
    basic_auth_users_file: Optional[str] = None

    @model_validator(mode="after")
    def _tls_pair(self) -> "WebConfig":
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.basic_auth_users and self.basic_auth_users_file:
            raise ValueError("basic_auth_users and basic_auth_users_file both set; keep one")
        for user, hashed in self.basic_auth_users.items():
            if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise ValueError(
                    f"basic_auth_users.{user}: expected a bcrypt hash ($2b$...), not a plain password"
                )
        return self


class ExporterConfig(_Strict):
    listen: str = "0.0.0.0:9877"
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    allowed_targets: tuple[str, ...] = ()  # regexes a raw URL given to /probe must match in full
    max_concurrent_probes: int = Field(default=8, ge=1, le=256)
    history_size: int = Field(default=20, ge=1, le=1000)
    history_failures_size: int = Field(default=50, ge=1, le=1000)
    history_max_results: int = Field(default=10_000, ge=10, le=1_000_000)  # all targets and probes together
    history_max_mib: int = Field(default=64, ge=1, le=4096)  # estimated memory of the kept results
    shutdown_grace: Duration = 10.0
    shard: Optional[str] = None  # "I/N": probe only the targets that hash to shard I of N (--shard wins)
    web: WebConfig = Field(default_factory=WebConfig)

    @field_validator("shard")
    @classmethod
    def _shard(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            from exporter.shard import ShardError, parse_shard

            try:
                parse_shard(value)
            except ShardError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT like 0.0.0.0:9877, got {value!r}")
        return value

    @field_validator("allowed_targets")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        return value


class BasicAuth(_Strict):
    username: str
    password: Optional[str] = Field(default=None, repr=False)
    password_file: Optional[str] = None  # read at each request, so a rotated secret applies at once

    @model_validator(mode="after")
    def _one_password(self) -> "BasicAuth":
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of password and password_file")
        return self


class TLSConfig(_Strict):
    """TLS towards a target, with Prometheus' http_config names; files are read at load and on reload."""

    ca_file: Optional[str] = None  # PEM CA bundle to verify the server with (default: the system's)
    cert_file: Optional[str] = None  # client certificate (mTLS), with key_file
    key_file: Optional[str] = None
    server_name: Optional[str] = None  # the name to send (SNI) and to verify the certificate against
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> "TLSConfig":
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file must be set together (a client certificate and its key)")
        if self.server_name is not None and not _SERVER_NAME.match(self.server_name):
            raise ValueError(f"server_name: expected a host name like asr.example.internal, got {self.server_name!r}")
        return self

    def files(self) -> dict[str, str]:
        return {name: path for name in ("ca_file", "cert_file", "key_file") if (path := getattr(self, name))}


class TargetConfig(_Strict):
    name: str
    url: str
    api: Literal["auto", "v1", "v2"] = "auto"
    probes: Optional[tuple[str, ...]] = None  # None: every probe kind that applies
    bearer_token: Optional[str] = Field(default=None, repr=False)
    bearer_token_file: Optional[str] = None  # read at each request, so a rotated secret applies at once
    basic_auth: Optional[BasicAuth] = None
    tls_config: Optional[TLSConfig] = None
    proxy_url: Optional[str] = Field(default=None, repr=False)  # may hold proxy credentials

    @field_validator("name")
    @classmethod
    def _name(cls, value: str, info: ValidationInfo) -> str:
        if info.context and info.context.get("discovered"):
            if not _DISCOVERED_NAME.match(value):
                raise ValueError("expected the URL's host[:port][/path] without spaces or quotes (it becomes a label)")
            return value
        if not _NAME.match(value):
            raise ValueError(
                "expected a short name of letters, digits, '_', '.', ':' or '-' (it becomes a label value)"
            )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a URL: expected http(s)://HOST[:PORT][/PREFIX], got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("expected a base URL without query string or fragment")
        if parts.username is not None or parts.password is not None:
            # a URL is shown and logged in many places; a password belongs where it is never shown
            raise ValueError("credentials in the URL are refused: put them under basic_auth "
                             "({username: ..., password: ...}) and give the URL without user:password@")
        return value.rstrip("/")

    @field_validator("proxy_url")
    @classmethod
    def _proxy_url(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("expected an HTTP proxy URL like http://proxy.example:3128 (CONNECT is used for "
                             "https:// and wss:// targets)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("expected http://[USER:PASSWORD@]HOST:PORT without a path")
        return value

    @field_validator("probes")
    @classmethod
    def _probes(cls, value: Optional[tuple[str, ...]]) -> Optional[tuple[str, ...]]:
        for kind in value or ():
            if kind not in PROBE_KINDS:
                raise ValueError(f"unknown probe {kind!r}; expected some of {', '.join(PROBE_KINDS)}")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> "TargetConfig":
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ValueError("bearer_token and bearer_token_file both set; keep one (the file form for secrets)")
        if (self.bearer_token or self.bearer_token_file) and self.basic_auth:
            raise ValueError("bearer_token and basic_auth both set; a request carries one Authorization header")
        if self.tls_config is not None and not self.url.startswith("https://"):
            raise ValueError("tls_config is set but the url is not https://")
        return self

    def enabled_probes(self) -> tuple[str, ...]:
        return self.probes if self.probes is not None else DEFAULT_PROBES


class Schedule(_Strict):
    interval: Duration
    timeout: Duration

    @model_validator(mode="after")
    def _timeout_fits(self) -> "Schedule":
        if self.timeout > self.interval:
            raise ValueError(
                f"timeout ({self.timeout:g}s) must not exceed interval ({self.interval:g}s)"
            )
        return self


class _SchedulesBase(_Strict):
    def for_kind(self, kind: str) -> Schedule:
        return getattr(self, kind)


# `schedules.<kind>` for every kind of the registry, with the registry's defaults.
Schedules = create_model(
    "Schedules", __base__=_SchedulesBase,
    **{name: (Schedule, Schedule(interval=kind.interval, timeout=kind.timeout)) for name, kind in KINDS.items()},
)


class Thresholds(_Strict):
    """Alert and panel thresholds; the seed monitor's values are the defaults."""

    cpu_usage_percent: Percent = 80
    cpu_usage_critical_percent: Percent = 95
    memory_usage_percent: Percent = 85
    memory_usage_critical_percent: Percent = 95
    disk_usage_percent: Percent = 90
    disk_usage_critical_percent: Percent = 97
    response_time_seconds: float = Field(default=5.0, gt=0)
    error_rate_percent: Percent = 10
    stream_first_result_seconds: float = Field(default=2.0, gt=0)
    stream_result_lag_seconds: float = Field(default=1.0, gt=0)
    character_error_rate: float = Field(default=0.2, ge=0, le=1)
    slo_availability_percent: float = Field(default=99.0, gt=0, lt=100)
    slo_latency_percent: float = Field(default=95.0, gt=0, lt=100)
    stale_after: Duration = 600.0
    for_short: Duration = 120.0  # `for:` of alerts on fast-moving signals
    for_long: Duration = 600.0  # `for:` of alerts on slow-moving signals

    @model_validator(mode="after")
    def _critical_above_warning(self) -> "Thresholds":
        for name in ("cpu_usage", "memory_usage", "disk_usage"):
            warn, crit = getattr(self, f"{name}_percent"), getattr(self, f"{name}_critical_percent")
            if crit < warn:
                raise ValueError(f"{name}_critical_percent ({crit:g}) is below {name}_percent ({warn:g})")
        return self


def _base_url(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s):// base URL like http://grafana.example.org:3000, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("expected a base URL without query string or fragment")
    return value.rstrip("/")


class Links(_Strict):
    """Where people reach the exporter, Grafana and the runbook: the alerts' links are built from these."""

    exporter: str = "http://localhost:9877"
    grafana: str = "http://localhost:3000"
    runbook: Optional[str] = None  # default: the exporter's own /runbook

    @field_validator("exporter", "grafana", "runbook")
    @classmethod
    def _urls(cls, value: Optional[str]) -> Optional[str]:
        return _base_url(value)

    def runbook_base(self) -> str:
        return self.runbook or f"{self.exporter}/runbook"


class ClipConfig(_Strict):
    path: str
    transcript: str = Field(min_length=1)


class _ProbesBase(_Strict):
    def for_kind(self, kind: str) -> BaseModel:
        return getattr(self, kind)


# `probes.<kind>`: each probe kind's settings model from the registry, all defaults by default.
Probes = create_model(
    "Probes", __base__=_ProbesBase,
    **{name: (KINDS[name].settings, KINDS[name].settings()) for name in PROBE_KINDS},
)


TARGETS_FILE_SUFFIXES = (".json", ".yml", ".yaml")
# Clips that need no `clips.<name>` entry: exporter/data/<name>.wav and .txt (scripts/make-clip.sh).
BUILTIN_CLIPS = ("default", "short")


class Config(_Strict):
    exporter: ExporterConfig = Field(default_factory=ExporterConfig)
    targets: tuple[TargetConfig, ...] = ()
    targets_files: tuple[str, ...] = ()  # globs of Prometheus file_sd files; relative to the config file
    schedules: Schedules = Field(default_factory=Schedules)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    clips: dict[str, ClipConfig] = Field(default_factory=dict)
    probes: Probes = Field(default_factory=Probes)
    links: Links = Field(default_factory=Links)

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, value: tuple[TargetConfig, ...]) -> tuple[TargetConfig, ...]:
        seen: set[str] = set()
        for target in value:
            if target.name in seen:
                raise ValueError(f"target name {target.name!r} is used twice; names must be unique")
            seen.add(target.name)
        return value

    @field_validator("targets_files")
    @classmethod
    def _targets_files(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError("an empty pattern; expected a glob like targets/*.yml")
            if not pattern.endswith(TARGETS_FILE_SUFFIXES):
                raise ValueError(f"{pattern!r}: expected a glob of .json, .yml or .yaml files (file_sd's formats), "
                                 "like targets/*.yml")
        return value

    @field_validator("clips")
    @classmethod
    def _no_default_override(cls, value: dict[str, ClipConfig]) -> dict[str, ClipConfig]:
        for name in BUILTIN_CLIPS:
            if name in value:
                raise ValueError(f"{name!r} is a built-in clip; give your clip another name")
        return value

    @model_validator(mode="after")
    def _clip_references(self) -> "Config":
        known = {*BUILTIN_CLIPS, *self.clips}
        for kind in PROBE_KINDS:
            clip = getattr(self.probes.for_kind(kind), "clip", None)
            if clip is not None and clip not in known:
                raise ValueError(
                    f"probes.{kind}.clip: unknown clip {clip!r}; define it under clips or use 'default' or 'short'"
                )
        return self

    def target(self, name: str) -> Optional[TargetConfig]:
        return next((t for t in self.targets if t.name == name), None)


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "tagged-union")) or part in ("[key]",):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def _explain(error: dict[str, Any]) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden" and error["loc"][-1] == "allow_model_load":
        return ("allowed only under probes.batch and probes.punctuation, whose models whoAsr loads on demand; "
                "this probe never loads a model: remove the key")
    if kind == "extra_forbidden":
        return "unknown key (check its spelling; see config.example.yaml for every key)"
    if kind == "missing":
        return "required but missing"
    if kind == "literal_error":
        return f"expected one of {error['ctx']['expected']}, got {error['input']!r}"
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        message = f"{message}, got {error['input']!r}"
    return message


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        path = _field_path(error["loc"]) or "(top level)"
        lines.append(f"{source}: {path}: {_explain(error)}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of sections (exporter, targets, ...)")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    # Clip paths are relative to the config file; resolve them once so nothing later needs the source.
    base = Path(source).parent if source != "<config>" else Path(".")
    clips = {}
    for name, clip in config.clips.items():
        path = Path(clip.path) if Path(clip.path).is_absolute() else (base / clip.path).resolve()
        if not path.is_file():
            raise ConfigError(f"{source}: clips.{name}.path: no such file {str(path)!r}")
        clips[name] = clip.model_copy(update={"path": str(path)})
    targets = tuple(_resolve_target_files(target, index, base, source)
                    for index, target in enumerate(config.targets))
    web = config.exporter.web
    if web.basic_auth_users_file:
        path = web.basic_auth_users_file
        path = path if Path(path).is_absolute() else str((base / path).resolve())
        users = read_users_file(path, f"{source}: exporter.web.basic_auth_users_file")
        web = web.model_copy(update={"basic_auth_users_file": path, "basic_auth_users": users})
        config = config.model_copy(update={"exporter": config.exporter.model_copy(update={"web": web})})
    # Targets file globs too, as Prometheus resolves file_sd paths against its config file.
    targets_files = tuple(pattern if Path(pattern).is_absolute() else str(base.resolve() / pattern)
                          for pattern in config.targets_files)
    return config.model_copy(update={"clips": clips, "targets": targets, "targets_files": targets_files})


def read_users_file(path: str, where: str) -> dict[str, str]:
    """USER:BCRYPT-HASH lines (`htpasswd -nB USER` output; blank lines and # comments skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file {path!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            # the line itself is not repeated: it may hold a plain password written by mistake
            raise ConfigError(f"{where}: line {number}: expected USER:BCRYPT-HASH (htpasswd -nB USER)")
        if user in users:
            raise ConfigError(f"{where}: line {number}: user {user!r} is listed twice")
        users[user] = hashed
    if not users:
        raise ConfigError(f"{where}: {path!r} lists no user (expected USER:BCRYPT-HASH lines)")
    return users


def _resolve_target_files(target: TargetConfig, index: int, base: Path, source: str) -> TargetConfig:
    """Makes a target's file paths absolute (relative ones are relative to the config file, as in
    Prometheus) and checks that its TLS files make a usable context now, naming the field if not.
    Secret files are not read here: they are read at each request (a rotated Secret applies at once)."""
    from exporter.tls import TLSFileError, client_context

    def absolute(path: str) -> str:
        return path if Path(path).is_absolute() else str((base / path).resolve())

    update: dict[str, Any] = {}
    if target.bearer_token_file:
        update["bearer_token_file"] = absolute(target.bearer_token_file)
    if target.basic_auth and target.basic_auth.password_file:
        update["basic_auth"] = target.basic_auth.model_copy(
            update={"password_file": absolute(target.basic_auth.password_file)})
    if target.tls_config:
        tls = target.tls_config.model_copy(
            update={name: absolute(path) for name, path in target.tls_config.files().items()})
        try:
            client_context(tls)
        except TLSFileError as exc:
            raise ConfigError(f"{source}: targets[{index}].tls_config.{exc.field}: {exc}") from None
        update["tls_config"] = tls
    return target.model_copy(update=update) if update else target


def load_config(path: str | Path) -> Config:
    """Reads and validates a config file; raises ConfigError with every problem found."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{source}: {where}not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, source)


def load_config_or_report(path: str | Path) -> Optional[Config]:
    """load_config for a command: the config, or None once the ConfigError is printed to stderr (the
    command then exits 2)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
