"""Settings: environment variable > YAML file (``AGNES_CONFIG``) > default, resolved once.

Every setting is declared once in ``SETTINGS`` (name, environment variable, YAML
path, type, default, help). The typed ``Settings`` object, the YAML example and
the README's configuration table are all derived from that one list, so they
cannot drift apart (a test checks the example and the README).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import msgspec

FALSEY = frozenset({"0", "false", "no", "off", ""})


class ConfigError(Exception):
    """Invalid configuration; the message names the offending key."""


@dataclass(frozen=True)
class Setting:
    name: str
    env: str | None
    yaml: str
    type: type
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("show_status_frame", "AGNES_HOME_SHOW_STATUS_FRAME", "instance.home.show_status_frame", bool, True,
            "Show the status frame on /home (operator switch; users must also be onboarded)."),
    Setting("show_automode", "AGNES_HOME_SHOW_AUTOMODE", "instance.home.show_automode", bool, True,
            "Show the auto-mode card on /home."),
    Setting("show_cost", "AGNES_HOME_SHOW_COST", "instance.home.show_cost", bool, True,
            "Show estimated cost to analysts (/home, /activity and their API); off: operators still see it."),
    Setting("prices_file", "AGNES_PRICES_FILE", "instance.prices_file", str, "",
            "YAML/JSON file of negotiated prices per model ({models: {name: {input, output, cache_read, "
            "cache_write, cache_write_1h, fast}}}, USD per million tokens) over genai-prices'; empty: none."),
    Setting("public_url", "AGNES_PUBLIC_URL", "instance.public_url", str, "",
            "Base URL analysts use to reach this server (shown in `agnes init`); defaults to the request's host."),
    Setting("memory_file", "AGNES_MEMORY_FILE", "instance.memory_file", str, "",
            "YAML/JSON file of memory rules `agnes pull` fetches ({mandatory: [...], approved: [...]}); empty: none."),
    Setting("admin_emails", "AGNES_ADMIN_EMAILS", "auth.admin_emails", list, [],
            "Users (by email; comma-separated in the environment) allowed to call /api/admin/*."),
    Setting("admin_per_analyst", "AGNES_ADMIN_PER_ANALYST", "instance.admin.per_analyst", bool, True,
            "Show operators (/admin and /api/admin/usage) one row per analyst, their drill-down and who needs "
            "help by name; off: team figures only, every row covering fewer than admin_min_group analysts "
            "suppressed."),
    Setting("admin_min_group", "AGNES_ADMIN_MIN_GROUP", "instance.admin.min_group", int, 3,
            "With admin_per_analyst off: the fewest analysts a shown row (a day, a tool, a model) may cover."),
    Setting("database_url", "AGNES_DATABASE_URL", "database.url", str, "",
            "PostgreSQL to use instead of SQLite (postgresql://user:pass@host:5432/db), for several replicas "
            "on one database; empty: SQLite at db_path."),
    Setting("db_path", "AGNES_DB_PATH", "database.path", str, "var/agnes.db",
            "SQLite database file (when database_url is empty)."),
    Setting("data_dir", "AGNES_DATA_DIR", "storage.data_dir", str, "var/data",
            "Uploaded transcripts, table files and the generated secret key live here."),
    Setting("session_dir", "AGNES_SESSION_DIR", "storage.session_dir", str, "",
            "Watched directory of transcripts, <dir>/<user id or email local part>/**/*.jsonl; empty: none."),
    Setting("read_cache", "AGNES_READ_CACHE", "database.read_cache", bool, True,
            "Reuse the answers of hot reads (a token's user, the status frame) while the database is "
            "unchanged (SQLite's data_version, or on PostgreSQL every replica's commit notification); off: read every time."),
    Setting("host", "AGNES_HOST", "server.host", str, "127.0.0.1", "Address to listen on."),
    Setting("port", "AGNES_PORT", "server.port", int, 8080, "Port to listen on."),
    Setting("shutdown_timeout", "AGNES_SHUTDOWN_TIMEOUT", "server.shutdown_timeout", float, 10.0,
            "Seconds to finish in-flight work after SIGTERM."),
    Setting("client_timeout", "AGNES_CLIENT_TIMEOUT", "server.client_timeout", float, 60.0,
            "Seconds a client gets to send a request's headers (from connecting, or after its last "
            "response on a kept-alive connection) and may stay silent inside a body (then 408)."),
    Setting("secret_key", "AGNES_SECRET_KEY", "auth.secret_key", str, "",
            "Key that signs session cookies; generated and kept under data_dir when empty."),
    Setting("cookie_secure", "AGNES_COOKIE_SECURE", "auth.cookie_secure", bool, False,
            "Mark the session cookie Secure (set when served over HTTPS)."),
    Setting("session_max_age", "AGNES_SESSION_MAX_AGE", "auth.session_max_age", int, 14 * 24 * 3600,
            "Lifetime of a browser sign-in, in seconds."),
    Setting("proxy_header", "AGNES_PROXY_HEADER", "auth.proxy_header", str, "",
            "Header carrying the signed-in user's email from a trusted SSO proxy; empty: disabled."),
    Setting("trusted_proxies", "AGNES_TRUSTED_PROXIES", "auth.trusted_proxies", list, [],
            "Proxy addresses or networks (comma-separated in the environment) allowed to set proxy_header."),
    Setting("max_upload_mb", "AGNES_MAX_UPLOAD_MB", "ingest.max_upload_mb", int, 512,
            "Largest accepted transcript upload, in MB, compressed or decompressed (the client drops a "
            "transcript for good on a 413)."),
    Setting("scan_interval", "AGNES_SCAN_INTERVAL", "ingest.scan_interval", float, 30.0,
            "Seconds between scans of session_dir and reprocess ticks."),
    Setting("parse_workers", "AGNES_PARSE_WORKERS", "ingest.parse_workers", int, 1,
            "Worker processes that parse transcripts off the event loop (0: one background thread)."),
    Setting("claim_lease", "AGNES_CLAIM_LEASE", "ingest.claim_lease", float, 30.0,
            "PostgreSQL: seconds a replica's claim on a file lasts unless renewed; a replica killed mid-file "
            "leaves the file to another after this long."),
    Setting("max_failures", "AGNES_MAX_FAILURES", "ingest.max_failures", int, 5,
            "Failures after which a file is quarantined instead of retried."),
    Setting("reprocess_batch", "AGNES_REPROCESS_BATCH", "ingest.reprocess_batch", int, 50,
            "Files reprocessed per tick when the processor version moves on."),
    Setting("retention_days", "AGNES_RETENTION_DAYS", "ingest.retention_days", int, 400,
            "Usage events and activity older than this many days are pruned."),
    Setting("log_format", "AGNES_LOG_FORMAT", "logging.format", str, "text",
            "Log line format: text or json."),
    Setting("log_level", "AGNES_LOG_LEVEL", "logging.level", str, "INFO", "Log level (DEBUG, INFO, WARNING, ERROR; any case)."),
)

_CHOICES = {"log_format": ("text", "json"), "log_level": ("DEBUG", "INFO", "WARNING", "ERROR")}
_UPPER = frozenset({"log_level"})
# An empty database path is a temporary database SQLite throws away; an empty data dir is the cwd.
_REQUIRED = frozenset({"db_path", "data_dir"})
_POSITIVE = {"port", "admin_min_group", "max_upload_mb", "scan_interval", "claim_lease", "max_failures",
             "reprocess_batch", "retention_days", "session_max_age", "shutdown_timeout", "client_timeout"}
# "Keep forever" written as a huge number of days would put the cutoff before year 1 (a date
# overflow in every ingest and prune): a century is the ceiling.
MAX_RETENTION_DAYS = 36_500


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """The resolved configuration of one service instance."""

    show_status_frame: bool = True
    show_automode: bool = True
    show_cost: bool = True
    prices_file: str = ""
    public_url: str = ""
    memory_file: str = ""
    admin_per_analyst: bool = True
    admin_min_group: int = 3
    database_url: str = ""
    db_path: str = "var/agnes.db"
    read_cache: bool = True
    data_dir: str = "var/data"
    session_dir: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_timeout: float = 10.0
    client_timeout: float = 60.0
    secret_key: str = ""
    cookie_secure: bool = False
    session_max_age: int = 14 * 24 * 3600
    proxy_header: str = ""
    trusted_proxies: list[str] = []
    admin_emails: list[str] = []
    max_upload_mb: int = 512
    scan_interval: float = 30.0
    parse_workers: int = 1
    claim_lease: float = 30.0
    max_failures: int = 5
    reprocess_batch: int = 50
    retention_days: int = 400
    log_format: str = "text"
    log_level: str = "INFO"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


def env_bool(value: str) -> bool:
    """Environment booleans: 0/false/no/off/empty (any case) are false, anything else true."""
    return value.strip().lower() not in FALSEY


def _from_env(setting: Setting, raw: str) -> Any:
    if setting.type is bool:
        return env_bool(raw)
    if setting.type is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if setting.type in (int, float):
        try:
            return setting.type(raw.strip())
        except ValueError:
            raise ConfigError(f"{setting.env}: expected {setting.type.__name__}, got {raw!r}") from None
    return raw


def _flatten_yaml(doc: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{prefix or 'config file'}: expected a mapping")
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if value is None and any(s.yaml.startswith(f"{path}.") for s in SETTINGS):
            continue  # a section whose keys are all commented out: nothing set
        if isinstance(value, Mapping):
            flat.update(_flatten_yaml(value, path))
        else:
            flat[path] = value
    return flat


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"AGNES_CONFIG: cannot read {path}: {exc.strerror}") from None
    try:
        doc = msgspec.yaml.decode(text) if text.strip() else {}
    except msgspec.DecodeError as exc:
        raise ConfigError(f"AGNES_CONFIG: {path} is not valid YAML: {exc}") from None
    return _flatten_yaml(doc or {})


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Resolve every setting: keyword overrides > environment > YAML > default.

    Raises ConfigError naming the key when a value is invalid or a YAML key is unknown.
    """
    environ = os.environ if environ is None else environ
    yaml_values = _read_yaml(environ["AGNES_CONFIG"]) if environ.get("AGNES_CONFIG") else {}
    known = {s.yaml for s in SETTINGS}
    unknown = sorted(set(yaml_values) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown configuration key")

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in overrides:
            values[setting.name], source = overrides.pop(setting.name), setting.name
        elif setting.env and setting.env in environ:
            values[setting.name], source = _from_env(setting, environ[setting.env]), setting.env
        elif setting.yaml in yaml_values:
            values[setting.name], source = yaml_values[setting.yaml], setting.yaml
        else:
            continue
        if setting.name in _UPPER and isinstance(values[setting.name], str):
            values[setting.name] = values[setting.name].upper()  # `info` means INFO, as in logging
        _check(setting, values[setting.name], source)
    if overrides:
        raise ConfigError(f"{sorted(overrides)[0]}: unknown setting")
    try:
        return msgspec.convert(values, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None


def _check(setting: Setting, value: Any, source: str) -> None:
    expected = setting.type
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if expected is list and ok:
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        raise ConfigError(f"{source}: expected {expected.__name__}, got {value!r}")
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"{source}: must be a finite number, got {value!r}")
    if setting.name in _POSITIVE and value <= 0:
        raise ConfigError(f"{source}: must be greater than 0, got {value!r}")
    if setting.name == "retention_days" and value > MAX_RETENTION_DAYS:
        raise ConfigError(f"{source}: must be at most {MAX_RETENTION_DAYS} (100 years), got {value!r}")
    if setting.name in _REQUIRED and not value.strip():
        raise ConfigError(f"{source}: must not be empty")
    if setting.name == "port" and not 1 <= value <= 65535:
        raise ConfigError(f"{source}: must be a TCP port, 1-65535, got {value!r}")
    if setting.type is int and value < 0:
        raise ConfigError(f"{source}: must not be negative, got {value!r}")
    if setting.name in _CHOICES and value not in _CHOICES[setting.name]:
        raise ConfigError(f"{source}: must be one of {', '.join(_CHOICES[setting.name])}, got {value!r}")
    if setting.name == "public_url" and value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{source}: must be an http:// or https:// URL with a host, got {value!r}")
    if setting.name == "database_url" and value:
        if urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"{source}: must be a postgresql:// URL (empty: SQLite at db_path)")
    if setting.name == "trusted_proxies":
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ConfigError(f"{source}: {entry!r} is not an IP address or network (CIDR)") from None


SECRETS = frozenset({"secret_key", "database_url"})  # shown masked by `config show` (a URL may hold a password)


class Source(msgspec.Struct, frozen=True):
    """Where a setting's value came from: kind is environment, yaml or default; key names the variable
    or YAML key (None for a default)."""

    kind: str
    key: str | None = None


def sources(environ: Mapping[str, str] | None = None) -> dict[str, Source]:
    """Where each setting's value comes from, by the same precedence as load_settings."""
    environ = os.environ if environ is None else environ
    config = environ.get("AGNES_CONFIG")
    yaml_values = _read_yaml(config) if config else {}
    found = {}
    for setting in SETTINGS:
        if setting.env and setting.env in environ:
            found[setting.name] = Source("environment", setting.env)
        elif setting.yaml in yaml_values:
            found[setting.name] = Source("yaml", setting.yaml)
        else:
            found[setting.name] = Source("default")
    return found


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """AGNES_* variables that are not settings (a misspelt name is otherwise silently ignored), each
    with the closest real name, or None."""
    environ = os.environ if environ is None else environ
    known = {s.env for s in SETTINGS if s.env} | {"AGNES_CONFIG"}
    unknown = sorted(name for name in environ if name.startswith("AGNES_") and name not in known)
    return [(name, next(iter(difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)), None))
            for name in unknown]


def shown_value(name: str, value: Any) -> Any:
    """A value as `config show` prints it: secrets masked."""
    return "***" if name in SECRETS and value else value


def settings_table(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """`config show`: one row per setting with its value and where it came from."""
    environ = os.environ if environ is None else environ
    config = environ.get("AGNES_CONFIG", "")
    found = sources(environ)
    rows = [("setting", "value", "source")]
    for setting in SETTINGS:
        value = shown_value(setting.name, getattr(settings, setting.name))
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = ",".join(value) or "(empty)"
        else:
            text = str(value) if value != "" else "(empty)"
        source = found[setting.name]
        where = {"environment": f"environment ({source.key})", "yaml": f"YAML ({config}: {source.key})",
                 "default": "default"}[source.kind]
        rows.append((setting.name, text, where))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]
    lines.insert(1, f"{'-' * width[0]}  {'-' * width[1]}  {'-' * 6}")
    return "\n".join(lines)


def settings_json(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`config show --json`: {name: {"value", "source", "key"}}."""
    found = sources(environ)
    return {s.name: {"value": shown_value(s.name, getattr(settings, s.name)), "source": found[s.name].kind,
                     "key": found[s.name].key} for s in SETTINGS}


def yaml_example() -> str:
    """The documented ``instance.yaml.example``, generated from SETTINGS."""
    lines = ["# Agnes Home configuration. Every key is optional; the environment variable",
             "# named beside each key overrides it. Point AGNES_CONFIG at this file.", ""]
    tree: dict[str, Any] = {}
    for s in SETTINGS:
        node = tree
        *parents, leaf = s.yaml.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = s

    def emit(node: dict[str, Any], depth: int) -> None:
        pad = "  " * depth
        for key, value in node.items():
            if isinstance(value, Setting):
                env = f" (env {value.env})" if value.env else ""
                lines.append(f"{pad}# {value.help}{env}")
                lines.append(f"{pad}{key}: {_yaml_literal(value.default)}")
            else:
                lines.append(f"{pad}{key}:")
                emit(value, depth + 1)

    emit(tree, 0)
    return "\n".join(lines) + "\n"


def _yaml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[]" if not value else "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return str(value)


def markdown_table() -> str:
    """The README's configuration table, generated from SETTINGS."""
    rows = ["| environment | YAML key | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        default = _yaml_literal(s.default).strip('"') if s.default not in ("", []) else "(empty)"
        rows.append(f"| `{s.env}` | `{s.yaml}` | `{default}` | {s.help} |")
    return "\n".join(rows)
