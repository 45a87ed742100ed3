"""Load the YAML config file into frozen typed objects (the README's "Configuration").

Rules this module keeps:
- every error names its key path (``services.web.canary_weight: must be between 0 and
  100, got 140``), and all errors are reported together, not the first one;
- ``${NAME}`` anywhere in a string value is replaced from the environment; an unset name
  is an error at that value's key path;
- YAML syntax errors, duplicate keys and unreadable files are ConfigErrors too, so
  ``canaryproxy check`` and ``run`` print one kind of failure;
- pydantic is an implementation detail: its errors are translated here, at one boundary.
The schema (objects, defaults, value rules) lives in schema.py.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from canaryproxy.config.durations import format_duration, parse_canary_weight, parse_duration, show
from canaryproxy.config.schema import (
    FROM_FILE,
    Address,
    AdminConfig,
    BackendConfig,
    BucketBy,
    Config,
    ErrorBudgetConfig,
    HealthCheckConfig,
    KeyPath,
    LimitsConfig,
    MatchConfig,
    MetricsConfig,
    NotifyConfig,
    OutcomesConfig,
    OutlierConfig,
    PoolConfig,
    Problems,
    RolloutConfig,
    ServiceConfig,
    StateConfig,
    StickyConfig,
    TimeoutsConfig,
    TlsConfig,
    cross_field_problems,
    parse_steps,
)

__all__ = [
    "Address",
    "AdminConfig",
    "BackendConfig",
    "BucketBy",
    "Config",
    "ConfigError",
    "ErrorBudgetConfig",
    "HealthCheckConfig",
    "LimitsConfig",
    "MatchConfig",
    "MetricsConfig",
    "NotifyConfig",
    "OutcomesConfig",
    "OutlierConfig",
    "PoolConfig",
    "RolloutConfig",
    "ServiceConfig",
    "StateConfig",
    "StickyConfig",
    "TimeoutsConfig",
    "TlsConfig",
    "config_from_text",
    "config_warnings",
    "load_config",
    "parse_canary_weight",
    "parse_config",
    "parse_duration",
    "parse_steps",
    "parse_yaml",
    "summarize",
    "tls_context",
    "tls_problem",
]

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ROOT = "(top level)"

# pydantic error type -> our message (the offending value is appended as ", got ...").
_TYPE_MESSAGES = {
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
}


class ConfigError(Exception):
    """The config cannot be used; ``errors`` holds every ``key.path: message`` found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the config file is not UTF-8 text"]) from None
    return config_from_text(text, str(path), env)


def config_from_text(text: str, path: str, env: Mapping[str, str] | None = None) -> Config:
    """The config in ``text`` (read from ``path``): what a supervisor hands its workers."""
    try:
        data = parse_yaml(text)
    except ConfigError as exc:  # a syntax error: name the file it is in
        raise ConfigError([f"{path}: {error}" for error in exc.errors]) from None
    config = parse_config(data, env)
    if config.tls is not None:
        problem = tls_problem(config.tls)
        if problem is not None:
            raise ConfigError([f"tls: {problem}"])
    return config


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context for HTTP/1.1 over TLS 1.2+ with ``tls``'s certificate and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(tls.cert, tls.key)
    return context


def tls_problem(tls: TlsConfig) -> str | None:
    """Why the certificate and key cannot serve (unreadable, not PEM, not a pair), or None."""
    try:
        tls_context(tls)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"cannot load the certificate {tls.cert} with the key {tls.key}: {reason}"
    return None


MIN_SECRET_CHARS = 32
"""Shorter admin tokens and cookie secrets are accepted with a warning."""

# A ${NAME} or {$NAME} left unquoted is YAML flow syntax (a mapping), the usual cause.
_QUOTE_HINT = ' (a value with ${NAME} in it needs quotes: "${NAME}")'


def parse_yaml(text: str) -> object:
    """YAML text -> plain data; syntax errors and duplicate keys become a ConfigError."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "yaml"
        lines = text.splitlines()
        near = lines[max(mark.line - 1, 0) : mark.line + 1] if mark else []
        hint = _QUOTE_HINT if any("${" in line or "{$" in line for line in near) else ""
        raise ConfigError([f"{where}: {exc.problem or exc.context}{hint}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"yaml: {exc}"]) from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def parse_config(data: object, env: Mapping[str, str] | None = None) -> Config:
    """Plain data (as YAML loads it) -> Config, or ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{_ROOT}: must be a mapping of settings, got {show(data)}"])
    env_errors: list[tuple[KeyPath, str]] = []
    data = _interpolate(data, os.environ if env is None else env, (), env_errors)
    try:
        config = Config.model_validate(data, context=FROM_FILE)
    except ValidationError as exc:
        # A value whose variable is unset is already reported; what is left of it is noise.
        unset = {path for path, _ in env_errors}
        schema_errors = [e for e in _translate(exc) if e[0] not in unset]
        # The cross-field checks run on the model only once every field is valid: run them
        # here on what can be read, so one pass names every problem.
        cross = [e for e in cross_field_problems(data) if e not in schema_errors]
        raise ConfigError(_format(env_errors + schema_errors + cross)) from None
    if env_errors:
        raise ConfigError(_format(env_errors))
    return config


def config_warnings(config: Config) -> list[str]:
    """What is allowed but unwise: short secrets, cookies that end with the process."""
    warnings = []
    token = config.admin.token
    if token is not None and len(token) < MIN_SECRET_CHARS:
        warnings.append(
            f"admin.token: shorter than {MIN_SECRET_CHARS} characters ({len(token)}): "
            "easy to guess; use e.g. `openssl rand -base64 32`"
        )
    for i, secret in enumerate(config.sticky.secrets):
        if len(secret) < MIN_SECRET_CHARS:
            warnings.append(
                f"sticky.secrets.{i}: shorter than {MIN_SECRET_CHARS} characters "
                f"({len(secret)}): cookies signed with it can be forged by brute force"
            )
    if not config.sticky.secrets:
        warnings.append(
            "sticky.secrets: none set: a random secret is made at each start, so every "
            "sticky cookie (and every user's version) ends when the process restarts"
        )
    return warnings


def _format(errors: list[tuple[KeyPath, str]]) -> list[str]:
    return [f"{'.'.join(map(str, path)) or _ROOT}: {message}" for path, message in errors]


# --- ${NAME} interpolation -------------------------------------------------------------


def _interpolate(
    value: object, env: Mapping[str, str], path: KeyPath, errors: list[tuple[KeyPath, str]]
) -> Any:
    if isinstance(value, str) and "${" in value:
        return _REFERENCE.sub(lambda match: _lookup(match[1], env, path, errors), value)
    if isinstance(value, dict):
        return {key: _interpolate(item, env, (*path, key), errors) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env, (*path, i), errors) for i, item in enumerate(value)]
    return value


def _lookup(name: str, env: Mapping[str, str], path: KeyPath, errors: list[Any]) -> str:
    if _ENV_NAME.fullmatch(name) is None:
        errors.append((path, f"'${{{name}}}' is not a valid environment variable reference"))
    elif name not in env:
        errors.append((path, f"environment variable {name} is not set"))
    else:
        return env[name]
    return ""


# --- pydantic errors -> ours -----------------------------------------------------------


def _translate(exc: ValidationError) -> list[tuple[KeyPath, str]]:
    translated: list[tuple[KeyPath, str]] = []
    for error in exc.errors():
        # A bad mapping key (a service name) is reported at the key itself.
        path = tuple(part for part in error["loc"] if part != "[key]")
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, Problems):
            translated.extend(((*path, *sub), message) for sub, message in cause.problems)
        else:
            translated.append((path, _message(error, path)))
    return translated


def _message(error: ErrorDetails, path: KeyPath) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "extra_forbidden":
        return _unknown_key(path)
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {show(error['input'])}"
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]}, got {show(error['input'])}"
    return error["msg"][:1].lower() + error["msg"][1:]  # a kind our schema does not produce


def _unknown_key(path: KeyPath) -> str:
    model = _model_at(path[:-1])
    keys = [] if model is None else sorted(model.model_fields.keys() - model.keys_not_in_file)
    close = difflib.get_close_matches(str(path[-1]), keys, n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def _model_at(path: KeyPath) -> type[Any] | None:
    """The schema model that validates the mapping at ``path``, found from the annotations."""
    kind: object = Config
    for part in path:
        kind = _without_none(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(str(part))
            kind = None if field is None else field.annotation
        else:  # a dict's value or a tuple's item
            args = [arg for arg in get_args(kind) if arg is not Ellipsis]
            kind = args[-1] if args else None
    kind = _without_none(kind)
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _without_none(kind: object) -> object:
    if get_origin(kind) in (Union, UnionType):
        options = [arg for arg in get_args(kind) if arg is not type(None)]
        return options[0] if len(options) == 1 else kind
    return kind


# --- summary for `canaryproxy check` ---------------------------------------------------


def summarize(cfg: Config) -> str:
    token = "token set" if cfg.admin.token else "no token: admin routes answer 403"
    sticky = cfg.sticky
    tls = f", TLS with {cfg.tls.cert}" if cfg.tls else ""
    lines = [
        f"listen {cfg.listen}{tls}, admin {cfg.admin.listen} ({token})",
        f"{_workers(cfg.workers)}, state {_state(cfg)}",
        f"sticky cookie {sticky.cookie}: mode {sticky.mode}, max_age "
        f"{format_duration(sticky.max_age)}, {len(sticky.secrets)} secret(s)",
    ]
    for service in cfg.services.values():
        lines.extend(_summarize_service(service))
    return "\n".join(lines)


def _workers(n: int) -> str:
    return "1 process" if n == 1 else f"{n} worker processes and a supervisor"


def _state(cfg: Config) -> str:
    if cfg.state.redis is None:
        return f"in {cfg.state.path}"
    return f"shared through Redis at {redacted_url(cfg.state.redis)}"


def redacted_url(url: str) -> str:
    """A Redis URL fit for logs: the password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _summarize_service(service: ServiceConfig) -> list[str]:
    match = service.match
    lines = [f"service {service.name}: hosts {', '.join(match.hosts)}, path {match.path_prefix}"]
    lines.append(f"  stable: {_pool(service.stable)}")
    if service.canary is None:
        lines.append("  no canary pool: load-balances stable only")
    else:
        lines.append(f"  canary: {_pool(service.canary)}")
        how = [f"  canary weight {service.canary_weight:g}%"]
        if service.bucket_by is not None:
            how.append(f"bucket by {service.bucket_by.source}:{service.bucket_by.name}")
        if service.override_header is not None:
            how.append(f"override header {service.override_header}")
        lines.append(", ".join(how))
    check = service.health_check
    if check is None:
        lines.append("  health: passive outlier detection only")
    else:
        every = format_duration(check.interval)
        lines.append(
            f"  health: GET {check.path} every {every}, rise {check.rise} fall {check.fall}"
        )
    return lines


def _pool(pool: PoolConfig) -> str:
    return ", ".join(f"{backend.url} (weight {backend.weight})" for backend in pool.backends)
