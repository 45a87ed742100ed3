"""The configuration schema: frozen typed objects, and a parser for each kind of value.

Rules this module keeps (the README's "Configuration"):
- every key but ``services`` is optional and has a safe default; unknown keys are errors;
- values are parsed, not coerced: ``true`` is not a number and ``"10"`` is not a weight;
- every parser raises ValueError carrying the message only; load.py adds the key path;
- checks that span several keys raise ``Problems``, naming the key each problem sits at.
``limits`` and ``metrics`` are canaryproxy extensions to the documented file format.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network
from typing import Annotated, ClassVar, Literal, Self, TypeVar
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)

from canaryproxy.config.durations import (
    duration,
    format_duration,
    fraction,
    parse_canary_weight,
    show,
    whole,
)
from canaryproxy.vocabulary import Mode, hostport

# parse_config passes this as the validation context; Python callers building objects
# directly do not, so they may set fields the file may not (ServiceConfig.name).
FROM_FILE = {"source": "file"}

KeyPath = tuple[str | int, ...]


class Problems(ValueError):
    """Several errors found by one cross-key check, each at a path relative to the model."""

    def __init__(self, problems: list[tuple[KeyPath, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return hostport(self.host, self.port)


@dataclass(frozen=True, slots=True)
class BucketBy:
    source: Literal["header", "cookie"]
    name: str


# --- value parsers -------------------------------------------------------------------

# RFC 9110 §5.6.2 tchar; RFC 6265 §4.1.1 makes a cookie-name the same token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_URL_HINT = "must be an http:// URL with host and port"


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOSTNAME.fullmatch(host) is not None
    return True


def parse_address(value: object) -> Address:
    match = _ADDRESS.fullmatch(value.strip()) if isinstance(value, str) else None
    host = "" if match is None else (match["v6"] or match["host"] or "0.0.0.0").lower()
    if match is None or not _is_host(host) or (match["v6"] is not None and ":" not in host):
        raise ValueError(f"must be host:port, [IPv6]:port or :port, got {show(value)}")
    port = int(match["port"])
    if port > 65535:
        raise ValueError(f"port must be between 0 and 65535, got {show(value)}")
    return Address(host, port)


def parse_network(value: object) -> IPv4Network | IPv6Network:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            pass
    raise ValueError(f"must be an IP address or CIDR network like 10.0.0.0/8, got {show(value)}")


def parse_backend_url(value: object) -> str:
    """Normalise to ``http://host:port``: a backend is an origin, the request path is kept."""
    try:
        parts = urlsplit(value.strip()) if isinstance(value, str) else None
        port = None if parts is None else parts.port
    except ValueError:
        raise ValueError(f"{_URL_HINT}, got {show(value)}") from None
    if parts is None or parts.scheme.lower() != "http" or not _is_host(parts.hostname or ""):
        raise ValueError(f"{_URL_HINT}, got {show(value)}")
    if parts.username is not None or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"{_URL_HINT} and no path, query or user info, got {show(value)}")
    if port == 0:
        raise ValueError(f"port must be between 1 and 65535, got {show(value)}")
    host = str(parts.hostname)
    return f"http://{hostport(host, port or 80)}"


def parse_host_pattern(value: object) -> str:
    host = value.strip().lower().rstrip(".") if isinstance(value, str) else ""
    bare = host.removeprefix("*.")
    if host != "*" and (not _is_host(bare) or ":" in bare):
        raise ValueError(f"must be a hostname, *.domain or *, got {show(value)}")
    return host


def parse_token(value: object) -> str:
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
        raise ValueError(
            f"must be an HTTP token (letters, digits and !#$%&'*+-.^_`|~), got {show(value)}"
        )
    return value


_UNDERSCORE = "a header name with '_' is ignored by the proxy (as nginx does)"


def parse_header_name(value: object) -> str:
    """A request header the proxy reads: a token without '_' (such names are dropped)."""
    name = parse_token(value)
    if "_" in name:
        raise ValueError(f"{_UNDERSCORE}, got {show(value)}")
    return name


def parse_bucket_by(value: object) -> BucketBy:
    source, _, name = value.partition(":") if isinstance(value, str) else ("", "", "")
    if source not in ("header", "cookie") or _TOKEN.fullmatch(name) is None:
        raise ValueError(f"must be header:NAME or cookie:NAME, got {show(value)}")
    if source == "header" and "_" in name:
        raise ValueError(f"{_UNDERSCORE}, got {show(value)}")
    return BucketBy("header" if source == "header" else "cookie", name)


def parse_url_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or re.search(r"[\s?#]", value):
        raise ValueError(f"must be a path starting with /, got {show(value)}")
    return value


def parse_non_empty_string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {show(value)}")
    return value


def parse_service_name(value: object) -> str:
    # Names become metric labels and admin URL segments (/admin/services/{name}).
    if not isinstance(value, str) or _SERVICE_NAME.fullmatch(value) is None:
        raise ValueError("service name must be letters, digits, '_', '.' or '-'")
    return value


PositiveDuration = Annotated[float, PlainValidator(duration(allow_zero=False))]
Duration = Annotated[float, PlainValidator(duration(allow_zero=True))]
AtLeastOne = Annotated[int, PlainValidator(whole(1))]
Token = Annotated[str, PlainValidator(parse_token)]
HeaderName = Annotated[str, PlainValidator(parse_header_name)]
UrlPath = Annotated[str, PlainValidator(parse_url_path)]
NonEmptyString = Annotated[str, PlainValidator(parse_non_empty_string)]
AddressField = Annotated[Address, PlainValidator(parse_address)]
Network = Annotated[IPv4Network | IPv6Network, PlainValidator(parse_network)]

# --- models --------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    # Fields that exist on the object but are not keys of the file (hidden from "did you mean").
    keys_not_in_file: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _null_means_defaults(cls, data: object) -> object:
        # `sticky:` with every line below it commented out reads as null.
        return {} if data is None else data


class AdminConfig(_Frozen):
    listen: AddressField = Address("127.0.0.1", 9901)
    token: NonEmptyString | None = None


class TlsConfig(_Frozen):
    """TLS on ``listen``: a PEM certificate chain and its private key (re-read on SIGHUP)."""

    cert: NonEmptyString
    key: NonEmptyString


def split_url(value: object, schemes: tuple[str, ...], must: str) -> tuple[str, SplitResult]:
    """A URL with one of ``schemes``, a host and a valid port: its text and its parts.
    ``must`` says which schemes, for the error (``must start with http:// or https://``)."""
    text = parse_non_empty_string(value)
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if url.scheme not in schemes:
        raise ValueError(must)
    if not url.hostname:
        raise ValueError("names no host")
    if port == 0:
        raise ValueError("port must be 1-65535")
    return text, url


def parse_redis_url(value: object) -> str:
    """``redis://[user:password@]host[:port][/db]`` or ``rediss://`` (TLS)."""
    must = "must start with redis:// or rediss:// (TLS)"
    text, url = split_url(value, ("redis", "rediss"), must)
    db = url.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database after the host must be a number, got {db!r}")
    if url.query or url.fragment:
        raise ValueError("takes no ?query or #fragment")
    return text


def parse_webhook_url(value: object) -> str:
    """``http(s)://host[:port]/path``: where notifications are POSTed."""
    must = "must start with http:// or https://"
    return split_url(value, ("http", "https"), must)[0]


class NotifyConfig(_Frozen):
    # POST a JSON event on each ejection, restore and rollout move (Slack/Teams-readable).
    webhook: Annotated[str, PlainValidator(parse_webhook_url)] | None = None
    timeout: PositiveDuration = 5.0  # per attempt
    attempts: Annotated[int, PlainValidator(whole(1, 20))] = 5  # 1 + retries, backing off


def parse_workers(value: object) -> int:
    """A number of worker processes, or ``auto``: one per core."""
    if value == "auto":
        return max(os.cpu_count() or 1, 1)
    if type(value) is not int:
        raise ValueError(f"must be a whole number or auto, got {value!r}")
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be between 1 and {MAX_WORKERS}, got {value}")
    return value


MAX_WORKERS = 256


class StateConfig(_Frozen):
    path: NonEmptyString = "var/canaryproxy.db"
    # Shared by every instance instead of the file at path; see "Running several instances".
    redis: Annotated[str, PlainValidator(parse_redis_url)] | None = None
    # This instance's name in shared state (audit rows, logs); default host:pid.
    instance: NonEmptyString | None = None


class StickyConfig(_Frozen):
    cookie: Token = "cp_pool"
    secrets: tuple[NonEmptyString, ...] = ()
    max_age: PositiveDuration = 86400.0
    secure: bool = Field(default=False, strict=True)
    same_site: Literal["Strict", "Lax", "None"] = "Lax"
    mode: Mode = "session"

    @model_validator(mode="after")
    def _none_needs_secure(self) -> Self:
        if self.same_site == "None" and not self.secure:
            message = "None requires secure: true (browsers reject SameSite=None without Secure)"
            raise Problems([(("same_site",), message)])
        return self


class LimitsConfig(_Frozen):
    """Extension: protocol limits and timeouts of the proxy's client side."""

    header_timeout: PositiveDuration = 10.0
    body_timeout: PositiveDuration = 30.0
    keepalive_timeout: Duration = 15.0
    drain_timeout: Duration = 30.0
    max_header_bytes: AtLeastOne = 65536
    max_url_bytes: AtLeastOne = 8192


DEFAULT_BUCKETS = (1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class MetricsConfig(_Frozen):
    """Extension: latency histogram buckets, in seconds (durations allowed)."""

    buckets: tuple[PositiveDuration, ...] = DEFAULT_BUCKETS

    @model_validator(mode="after")
    def _increasing(self) -> Self:
        if not self.buckets:
            raise Problems([(("buckets",), "must list at least one bucket")])
        for before, after in zip(self.buckets, self.buckets[1:], strict=False):
            if after <= before:
                raise Problems(
                    [(("buckets",), f"must be strictly increasing, got {after:g} after {before:g}")]
                )
        return self


class BackendConfig(_Frozen):
    url: Annotated[str, PlainValidator(parse_backend_url)]
    weight: Annotated[int, PlainValidator(whole(1, 1000))] = 1

    @cached_property
    def host(self) -> str:
        return str(urlsplit(self.url).hostname)

    @cached_property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 80)


class PoolConfig(_Frozen):
    backends: tuple[BackendConfig, ...]

    @model_validator(mode="after")
    def _unique_backends(self) -> Self:
        if not self.backends:
            raise Problems([(("backends",), "must list at least one backend")])
        # One URL twice would collide in metrics labels; a higher weight says the same.
        seen: set[str] = set()
        problems: list[tuple[KeyPath, str]] = []
        for index, backend in enumerate(self.backends):
            if backend.url in seen:
                problems.append((("backends", index, "url"), f"duplicate backend {backend.url!r}"))
            seen.add(backend.url)
        if problems:
            raise Problems(problems)
        return self


class MatchConfig(_Frozen):
    hosts: tuple[Annotated[str, PlainValidator(parse_host_pattern)], ...] = ("*",)
    path_prefix: UrlPath = "/"

    @model_validator(mode="after")
    def _some_host(self) -> Self:
        if not self.hosts:
            raise Problems([(("hosts",), "must list at least one host ('*' matches any)")])
        return self


class TimeoutsConfig(_Frozen):
    connect: PositiveDuration = 2.0
    response: PositiveDuration = 30.0


class HealthCheckConfig(_Frozen):
    path: UrlPath = "/healthz"
    interval: PositiveDuration = 5.0
    timeout: PositiveDuration = 1.0
    rise: AtLeastOne = 2
    fall: AtLeastOne = 3

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> Self:
        if self.timeout >= self.interval:
            message = f"must be shorter than interval ({format_duration(self.interval)})"
            raise Problems([(("timeout",), f"{message}, got {format_duration(self.timeout)}")])
        return self


class OutlierConfig(_Frozen):
    consecutive_failures: AtLeastOne = 5
    base_ejection_time: PositiveDuration = 30.0
    max_ejection_time: PositiveDuration = 300.0

    @model_validator(mode="after")
    def _max_not_below_base(self) -> Self:
        if self.max_ejection_time < self.base_ejection_time:
            base = format_duration(self.base_ejection_time)
            message = f"must not be shorter than base_ejection_time ({base})"
            got = format_duration(self.max_ejection_time)
            raise Problems([(("max_ejection_time",), f"{message}, got {got}")])
        return self


class ErrorBudgetConfig(_Frozen):
    alpha: Annotated[float, PlainValidator(fraction(0.5, include_high=False))] = 0.0005
    stable_guard: Annotated[float, PlainValidator(fraction(1, include_high=True))] = 0.05
    window: PositiveDuration = 60.0
    min_requests: AtLeastOne = 100
    max_error_rate: Annotated[float, PlainValidator(fraction(1, include_high=True))] = 0.10
    max_p99_latency: PositiveDuration | None = None


def parse_steps(value: object) -> tuple[float, ...]:
    """Canary weights of a rollout's steps: increasing, each 0-100 (exclusive of 0)."""
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"must be a non-empty list of weights, got {show(value)}")
    steps = tuple(parse_canary_weight(v) for v in value)
    if steps[0] <= 0:
        raise ValueError("the first step must be above 0")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"must increase step by step, got {list(steps)}")
    return steps


def parse_status_list(value: object) -> tuple[int, ...]:
    """Status codes 100-599 counted as failures besides 5xx."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of status codes, got {show(value)}")
    codes = [whole(100, 599)(v) for v in value]
    return tuple(sorted(set(codes)))


def parse_ratio(value: object) -> float:
    """A ratio above 1 (the canary may be this many times worse than stable)."""
    number = fraction(1000, include_high=True)(value)
    if not number > 1:
        raise ValueError(f"must be greater than 1, got {show(value)}")
    return number


class OutcomesConfig(_Frozen):
    # A response header by which the backend marks a failed answer ("failure"); it is
    # removed before the client sees the response.
    header: HeaderName | None = None
    failure_statuses: Annotated[tuple[int, ...], PlainValidator(parse_status_list)] = ()
    # A response whose head arrives later than this is a slow outcome, judged against
    # stable like errors (rule latency).
    slow: PositiveDuration | None = None


class RolloutConfig(_Frozen):
    steps: Annotated[tuple[float, ...], PlainValidator(parse_steps)] = (
        5.0,
        10.0,
        25.0,
        50.0,
        100.0,
    )
    min_step_duration: Duration = 300.0
    min_step_requests: Annotated[int, PlainValidator(whole(0))] = 500
    max_ratio: Annotated[float, PlainValidator(parse_ratio)] = 2.0
    auto_start: bool = Field(default=False, strict=True)


class ServiceConfig(_Frozen):
    keys_not_in_file: ClassVar[frozenset[str]] = frozenset({"name"})

    name: str = ""  # the key under `services`, filled in by Config
    match: MatchConfig = MatchConfig()
    stable: PoolConfig
    canary: PoolConfig | None = None
    canary_weight: Annotated[float, PlainValidator(parse_canary_weight)] = 0.0
    bucket_by: Annotated[BucketBy, PlainValidator(parse_bucket_by)] | None = None
    override_header: HeaderName | None = None
    timeouts: TimeoutsConfig = TimeoutsConfig()
    health_check: HealthCheckConfig | None = None
    outlier_detection: OutlierConfig = OutlierConfig()
    error_budget: ErrorBudgetConfig = ErrorBudgetConfig()
    outcomes: OutcomesConfig = OutcomesConfig()
    rollout: RolloutConfig | None = None

    @field_validator("name")
    @classmethod
    def _name_is_the_key(cls, value: str, info: ValidationInfo) -> str:
        if info.context is FROM_FILE:
            raise ValueError("unknown key (the service name is its key under services)")
        return value

    @model_validator(mode="after")
    def _weight_needs_canary(self) -> Self:
        if self.canary_weight > 0 and self.canary is None:
            raise Problems([(("canary_weight",), "set but the service has no canary pool")])
        if self.rollout is not None and self.canary is None:
            raise Problems([(("rollout",), "set but the service has no canary pool")])
        return self


class Config(_Frozen):
    listen: AddressField = Address("0.0.0.0", 8080)
    trusted_proxies: tuple[Network, ...] = ()
    admin: AdminConfig = AdminConfig()
    tls: TlsConfig | None = None
    state: StateConfig = StateConfig()
    workers: Annotated[int, PlainValidator(parse_workers)] = 1
    sticky: StickyConfig = StickyConfig()
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig = NotifyConfig()
    # Extension: where the access log goes: stdout, stderr, off, or a file path (appended).
    access_log: NonEmptyString = "stdout"
    services: dict[Annotated[str, PlainValidator(parse_service_name)], ServiceConfig] = Field(
        default_factory=dict, validate_default=True
    )

    @field_validator("services")
    @classmethod
    def _named_and_present(cls, services: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
        if not services:
            raise ValueError("at least one service is required")
        return {key: service.model_copy(update={"name": key}) for key, service in services.items()}

    @model_validator(mode="after")
    def _secure_cookie_behind_tls(self) -> Self:
        # Served over TLS, the sticky cookie is Secure unless the file says otherwise.
        if self.tls is not None and "secure" not in self.sticky.model_fields_set:
            secure = self.sticky.model_copy(update={"secure": True})
            object.__setattr__(self, "sticky", secure)  # frozen: set once, while validating
        return self

    @model_validator(mode="after")
    def _unambiguous(self) -> Self:
        matches = [
            (name, service.match.hosts, service.match.path_prefix)
            for name, service in self.services.items()
        ]
        problems = _ambiguities(self.listen, self.admin.listen, matches)
        if problems:
            raise Problems(problems)
        return self


Match = tuple[str, tuple[str, ...], str]  # (service, hosts, path_prefix)


def _ambiguities(
    listen: Address | None, admin: Address | None, matches: list[Match]
) -> list[tuple[KeyPath, str]]:
    """The cross-field rules: one address per listener, one service per host and prefix."""
    problems = _overlapping_services(matches)
    if listen is not None and listen == admin and listen.port != 0:
        problems.append((("admin", "listen"), f"same address as listen ({listen})"))
    return problems


def cross_field_problems(data: object) -> list[tuple[KeyPath, str]]:
    """The cross-field rules over raw config data whose fields did not all validate: what
    can be read is checked, what cannot is left to the field errors already reported."""
    if not isinstance(data, dict):
        return []
    admin = data.get("admin")
    listen = _readable(parse_address, data.get("listen"), Address("0.0.0.0", 8080))
    admin_listen = _readable(
        parse_address,
        admin.get("listen") if isinstance(admin, dict) else None,
        Address("127.0.0.1", 9901),
    )
    services = data.get("services")
    matches: list[Match] = []
    for name, service in services.items() if isinstance(services, dict) else []:
        match = service.get("match") if isinstance(service, dict) else None
        match = match if isinstance(match, dict) else {}
        hosts = match.get("hosts", ["*"])
        prefix = _readable(parse_url_path, match.get("path_prefix"), "/")
        named = _readable(parse_service_name, name, None)
        if named is not None and isinstance(hosts, list) and prefix is not None:
            patterns = [_readable(parse_host_pattern, h, None) for h in hosts]
            if all(p is not None for p in patterns):
                matches.append((named, tuple(p for p in patterns if p is not None), prefix))
    return _ambiguities(listen, admin_listen, matches)


R = TypeVar("R")


def _readable(parse: Callable[[object], R], value: object, default: R) -> R | None:
    """``parse(value)``; ``default`` when absent; None when it does not parse."""
    if value is None:
        return default
    try:
        return parse(value)
    except ValueError:
        return None


def _overlapping_services(matches: list[Match]) -> list[tuple[KeyPath, str]]:
    """Two services claiming the same host and path_prefix would route by file order."""
    owner: dict[tuple[str, str], str] = {}
    problems: list[tuple[KeyPath, str]] = []
    for name, hosts, prefix in matches:
        for host in hosts:
            other = owner.setdefault((host, prefix), name)
            if other != name:
                message = f"host '{host}' with path_prefix '{prefix}' is already matched by"
                message += f" service '{other}'"
                problems.append((("services", name, "match"), message))
                break
    return problems
