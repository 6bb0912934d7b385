"""Settings: each declared once, CLI flag > environment variable > default, frozen once built.

A :class:`Setting` declares one setting: its name, flag, environment variable, type (a parser
from text), default, help and check. The settings dataclasses below take their defaults from the
declarations and keep them in their fields' metadata; ``worker.cli`` builds the flags from the
same declarations, so a flag, its environment variable and its default cannot drift apart. A
bad value, from the flag, the environment or a constructor, is a :class:`SettingError` whose
message names the flag and the variable. The settings of ``worker train`` and ``worker simulate``
(offline commands) are flags only, without a variable.

Every librdkafka property can be passed through, as ``-X key=value`` on the command line or as
``WORKER_KAFKA_<KEY>`` in the environment (``WORKER_KAFKA_SASL_USERNAME`` -> ``sasl.username``).
A value ``@/path/to/file`` is read from that file (for secrets mounted as files). Secret values
are masked whenever settings are shown.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, cast

from worker.core.errors import ConfigError

T = TypeVar("T")
S = TypeVar("S")

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
SECRET_MARKERS = (
    "password",
    "secret",
    "key.pem",
    "token",
    "sasl.jaas.config",
    "sasl.oauthbearer.config",
)
_ENV_KAFKA_PREFIX = "WORKER_KAFKA_"
#: Key of a dataclass field's metadata that holds the field's :class:`Setting`.
_DECLARED = "worker.setting"


def env(name: str, default: str) -> str:
    """An environment variable, or the default when unset or empty.

    For values that are not settings; a setting is a :class:`Setting`, which also checks it.
    """
    value = os.environ.get(name)
    return value if value else default


def is_secret(key: str) -> bool:
    """Whether a property or setting name looks like it holds a secret (never shown)."""
    return any(marker in key.lower() for marker in SECRET_MARKERS)


def mask(properties: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of a property map with secret values replaced by ``***``."""
    return {k: ("***" if is_secret(k) else v) for k, v in properties.items()}


def _read_value(key: str, value: str) -> str:
    if not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        # For a secret, the "path" may be a password that merely starts with "@": never show it.
        where = "the file its @ value names" if is_secret(key) else str(path)
        raise ConfigError(f"cannot read the value of {key} from {where}: {exc.strerror}") from None


def kafka_properties(
    cli_pairs: list[str] | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """librdkafka pass-through properties from the environment, then ``-X key=value`` pairs.

    Raises:
        ConfigError: a pair without ``=``, or an unreadable ``@file``.
    """
    environ = os.environ if environ is None else environ
    props: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(_ENV_KAFKA_PREFIX) and value:
            key = name[len(_ENV_KAFKA_PREFIX) :].lower().replace("_", ".")
            props[key] = _read_value(key, value)
    for pair in cli_pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            # Never echo the pair: a malformed "sasl.password:secret" would leak the secret.
            raise ConfigError("-X expects key=value; got a value without '=' (not shown)")
        props[key.strip()] = _read_value(key, value)
    return props


# -- declarations -------------------------------------------------------------------------------


class SettingError(ConfigError):
    """A setting's value is unusable; the message names its flag and environment variable."""


# Value types: text -> value. A bad text raises ValueError whose message is the problem without
# the value ("is not an integer"), so that the caller decides whether the value may be shown.


def as_int(text: str) -> int:
    """An integer, as ``int()`` reads it (surrounding blanks and ``_`` separators allowed).

    Raises:
        ValueError: not an integer.
    """
    try:
        return int(text)
    except ValueError:
        raise ValueError("is not an integer") from None


def as_float(text: str) -> float:
    """A finite number: ``nan`` and ``inf`` would only fail later, deep in a computation.

    Raises:
        ValueError: not a number, or not finite.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    return value


def as_text(text: str) -> str:
    """The text itself."""
    return text


def as_secret_text(text: str) -> str:
    """The text, or for ``@/path`` the content of that file (a secret mounted as a file).

    Raises:
        ValueError: the file cannot be read (the message shows neither the value nor the path,
            which may be a password that starts with ``@``).
    """
    if not text.startswith("@"):
        return text
    try:
        return Path(text[1:]).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"names a file that cannot be read ({exc.strerror})") from None


def as_path(text: str) -> Path:
    """A filesystem path (not required to exist: the command that reads it says so)."""
    return Path(text)


_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


def as_bool(text: str) -> bool:
    """1/true/yes or 0/false/no, case-insensitive; anything else is not silently false.

    Raises:
        ValueError: none of those words.
    """
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("is not a boolean (true/false, yes/no, 1/0)")


@dataclass(frozen=True)
class OneOf:
    """A value type: one of a fixed set of words (the CLI shows them as the flag's metavar)."""

    options: tuple[str, ...]

    def __call__(self, text: str) -> str:
        """The word itself.

        Raises:
            ValueError: not one of the options.
        """
        if text not in self.options:
            raise ValueError(f"is not one of {', '.join(self.options)}")
        return text


# Checks: value -> the problem ("is not positive"), or None when the value is fine.


def positive(value: float) -> str | None:
    """Counts, sizes and durations that must be above zero."""
    return None if value > 0 else "is not positive"


def non_negative(value: float) -> str | None:
    """Waits and tolerances, where zero means none."""
    return None if value >= 0 else "is negative"


def port(value: int) -> str | None:
    """A TCP port; 0 where the setting says it disables the listener."""
    return None if 0 <= value <= 65535 else "is not a port number (0-65535)"


def not_empty(value: str) -> str | None:
    """Names (topics, groups, servers) that Kafka needs."""
    return None if value.strip() else "is empty"


@dataclass(frozen=True)
class AtLeast:
    """A check: the value is at least ``low`` (``AtLeast(2)``: a tree needs two leaves)."""

    low: float

    def __call__(self, value: float) -> str | None:
        """None when the value is at least ``low``, else the problem."""
        return None if value >= self.low else f"is less than {shown(self.low)}"


def shown(value: object, secret: bool = False) -> str:
    """A value as an error message shows it; a secret's value never is."""
    if secret:
        return "the value (not shown)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and float(f"{value:g}") == value:
        return f"{value:g}"  # 0 rather than 0.0, as it was most likely written
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting, declared once; its flag, environment fallback and field derive from it.

    Attributes:
        name: field of the settings object, and attribute of the parsed command line.
        flag: the command-line flag.
        parse: the value type: text -> value, ``ValueError`` (the problem) when unusable.
        default: the value when neither the flag nor the environment variable is given.
        env: environment variable read when the flag is absent; None for a flag only.
        help: what it does (the CLI adds the variable and the default).
        check: value -> the problem, or None when fine; not applied to a None value (unset).
        negatable: for a switch (``parse=as_bool``), whether ``--no-<flag>`` exists as well.
        secret: never show the value in an error (also implied by a secret-looking name).
    """

    name: str
    flag: str
    parse: Callable[[str], T]
    default: T
    env: str | None = None
    help: str = ""
    check: Callable[[Any], str | None] | None = None
    negatable: bool = True
    secret: bool = False

    @property
    def label(self) -> str:
        """How errors name the setting: ``--top-k / WORKER_TOP_K``."""
        return f"{self.flag} / {self.env}" if self.env else self.flag

    @property
    def is_switch(self) -> bool:
        """A boolean setting: a flag without a value on the command line."""
        return self.parse is as_bool

    @property
    def hidden(self) -> bool:
        """Whether its value must never be shown."""
        return self.secret or is_secret(self.name) or is_secret(self.env or "")

    def field(self) -> T:
        """The dataclass field of a settings object: this default, this declaration attached; a
        secret's field is left out of the object's repr."""
        return field(default=self.default, repr=not self.hidden, metadata={_DECLARED: self})

    def verify(self, value: T) -> T:
        """The value, if it passes the check.

        Raises:
            SettingError: it does not.
        """
        problem = None if value is None or self.check is None else self.check(value)
        if problem:
            raise SettingError(f"{self.label}: {shown(value, self.hidden)} {problem}")
        return value

    def from_text(self, text: str) -> T:
        """The value a flag's or an environment variable's text stands for, checked.

        Raises:
            SettingError: the text is not of the setting's type, or the value fails the check.
        """
        try:
            value = self.parse(text)
        except ValueError as exc:
            raise SettingError(f"{self.label}: {shown(text, self.hidden)} {exc}") from None
        return self.verify(value)

    def resolve(self, given: object, environ: Mapping[str, str] | None = None) -> T:
        """The value: the flag's (``given``), else the environment variable's, else the default.

        ``given`` is what the command line stored: None when the flag was absent, the text for a
        flag with a value, a bool for a switch. An empty environment variable counts as unset.

        Raises:
            SettingError: the flag's or the variable's value is unusable.
        """
        if isinstance(given, str):
            return self.from_text(given)
        if given is not None:
            return self.verify(cast(T, given))  # a switch's bool
        environ = os.environ if environ is None else environ
        text = environ.get(self.env) if self.env else None
        return self.from_text(text) if text else self.verify(self.default)


@dataclass(frozen=True)
class AtMost:
    """A rule between two settings: ``lower``'s value must not exceed ``upper``'s."""

    lower: Setting[Any]
    upper: Setting[Any]

    def verify(self, values: Mapping[str, Any]) -> None:
        """Check the rule on values by setting name.

        Raises:
            SettingError: ``lower`` is above ``upper``; the message names both.
        """
        low, high = values[self.lower.name], values[self.upper.name]
        if low is not None and high is not None and low > high:
            first = shown(low, self.lower.hidden)
            second = shown(high, self.upper.hidden)
            raise SettingError(
                f"{self.lower.label}: {first} is more than {self.upper.label} ({second})"
            )


def declared(settings_class: Any) -> list[Setting[Any]]:
    """The declared settings of a settings dataclass, in field order.

    Raises:
        TypeError: a field holds a declaration of another name (a programming error).
    """
    found = []
    for f in dataclasses.fields(settings_class):
        setting = f.metadata.get(_DECLARED)
        if setting is not None:
            if setting.name != f.name:
                raise TypeError(f"field {f.name} holds the declaration of {setting.name}")
            found.append(setting)
    return found


def rules_of(settings_class: Any) -> tuple[AtMost, ...]:
    """The cross-field rules of a settings dataclass (its ``rules`` class attribute)."""
    rules: tuple[AtMost, ...] = getattr(settings_class, "rules", ())
    return rules


def check_values(
    settings: Iterable[Setting[Any]], rules: Iterable[AtMost], values: Mapping[str, Any]
) -> None:
    """Check values by setting name: each setting's own check, then the rules between them.

    Raises:
        SettingError: the first problem found.
    """
    for setting in settings:
        setting.verify(values[setting.name])
    for rule in rules:
        rule.verify(values)


def validate(settings: Any) -> None:
    """Check a settings object (called by each class's ``__post_init__``).

    Raises:
        SettingError: a field's value or a rule between fields is broken.
    """
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    check_values(declared(type(settings)), rules_of(type(settings)), values)


def settings_from(settings_class: Callable[..., S], values: Mapping[str, Any], **given: Any) -> S:
    """A settings object from values by setting name (e.g. parsed arguments) and ``given``.

    Raises:
        SettingError: a value or a rule between values is broken.
    """
    names = [setting.name for setting in declared(settings_class)]
    return settings_class(**{name: values[name] for name in names}, **given)


# How to reach the cluster, and the topics (every command that talks to Kafka).
BOOTSTRAP_SERVERS = Setting(
    "bootstrap_servers",
    "--bootstrap-servers",
    as_text,
    DEFAULT_BOOTSTRAP,
    env="KAFKA_BOOTSTRAP_SERVERS",
    help="Kafka bootstrap servers",
    check=not_empty,
)
SCHEMA_REGISTRY_URL: Setting[str | None] = Setting(
    "schema_registry_url",
    "--schema-registry-url",
    as_text,
    None,
    env="WORKER_SCHEMA_REGISTRY_URL",
    help="Confluent-compatible schema registry; unset = Avro single-object encoding",
    secret=True,  # a URL may carry user:password
)
SCHEMA_REGISTRY_BASIC_AUTH: Setting[str | None] = Setting(
    "schema_registry_basic_auth",
    "--schema-registry-basic-auth",
    as_secret_text,
    None,
    env="WORKER_SCHEMA_REGISTRY_BASIC_AUTH",
    help="USER:PASSWORD for HTTP basic auth at the schema registry (@/path reads it from a file)",
    secret=True,
)
SCHEMA_REGISTRY_CA_LOCATION: Setting[Path | None] = Setting(
    "schema_registry_ca_location",
    "--schema-registry-ca-location",
    as_path,
    None,
    env="WORKER_SCHEMA_REGISTRY_CA_LOCATION",
    help="CA certificate (PEM) that verifies an https schema registry; unset = the system's CAs",
)
#: Where the codecs find the schema registry (every command that reads or writes records).
SCHEMA_REGISTRY_SETTINGS = (
    SCHEMA_REGISTRY_URL,
    SCHEMA_REGISTRY_BASIC_AUTH,
    SCHEMA_REGISTRY_CA_LOCATION,
)
EVENTS_TOPIC = Setting(
    "events",
    "--events-topic",
    as_text,
    "browsing-events",
    env="WORKER_EVENTS_TOPIC",
    help="input topic of browsing events",
    check=not_empty,
)
SUGGESTIONS_TOPIC = Setting(
    "suggestions",
    "--suggestions-topic",
    as_text,
    "product-suggestions",
    env="WORKER_SUGGESTIONS_TOPIC",
    help="output topic of the suggestions",
    check=not_empty,
)
PURCHASES_TOPIC = Setting(
    "purchases",
    "--purchases-topic",
    as_text,
    "purchases",
    env="WORKER_PURCHASES_TOPIC",
    help="topic of purchases (what the monitor scores suggestions against)",
    check=not_empty,
)
ACCURACY_TOPIC = Setting(
    "accuracy",
    "--accuracy-topic",
    as_text,
    "recommendation-accuracy",
    env="WORKER_ACCURACY_TOPIC",
    help="output topic of the monitor's accuracy windows",
    check=not_empty,
)
PARTITIONS = Setting(
    "partitions",
    "--partitions",
    as_int,
    12,
    env="WORKER_TOPIC_PARTITIONS",
    help="partitions of events, suggestions and purchases when created",
    check=positive,
)


def as_log_level(text: str) -> str:
    """A logging level name, in any case (``INFO`` and ``info`` alike).

    Raises:
        ValueError: not a level name.
    """
    return LOG_LEVELS(text.strip().lower())


LOG_LEVELS = OneOf(("debug", "info", "warning", "error"))
#: Logging, for every command of ``worker`` and ``worker-dev``.
LOG_LEVEL = Setting(
    "log_level",
    "--log-level",
    as_log_level,
    "info",
    env="WORKER_LOG_LEVEL",
    help="log level: debug adds a batch_scored line per micro-batch; one of "
    + ", ".join(LOG_LEVELS.options),
)
LOG_FORMAT = Setting(
    "log_format",
    "--log-format",
    OneOf(("auto", "json", "console")),
    "auto",
    env="WORKER_LOG_FORMAT",
    help="json: one JSON object per line; console: for humans; auto: console on a terminal, "
    "else json",
)
LOGGING_SETTINGS = (LOG_LEVEL, LOG_FORMAT)

MODELS_DIR = Setting(
    "models_dir",
    "--models-dir",
    as_path,
    Path("models"),
    env="WORKER_MODELS_DIR",
    help="models directory (uses its LATEST) or one artifact directory",
)

# The worker (`worker run`).
GROUP_ID = Setting(
    "group_id",
    "--group-id",
    as_text,
    "recommender-workers",
    env="WORKER_GROUP_ID",
    help="consumer group of the workers",
    check=not_empty,
)
TOP_K = Setting(
    "top_k", "--top-k", as_int, 10, env="WORKER_TOP_K", help="suggestions per event", check=positive
)
N_CANDIDATES = Setting(
    "n_candidates",
    "--candidates",
    as_int,
    50,
    env="WORKER_CANDIDATES",
    help="candidates scored per event (at least --top-k)",
    check=positive,
)
MAX_BATCH_SIZE = Setting(
    "max_batch_size",
    "--max-batch-size",
    as_int,
    500,
    env="WORKER_MAX_BATCH_SIZE",
    help="events per micro-batch, at most",
    check=positive,
)
MAX_BATCH_WAIT_MS = Setting(
    "max_batch_wait_ms",
    "--max-batch-wait-ms",
    as_int,
    20,
    env="WORKER_MAX_BATCH_WAIT_MS",
    help="how long an idle worker waits for a first record before its housekeeping (a "
    "micro-batch never waits to fill up: it is what has arrived, up to --max-batch-size)",
    check=non_negative,
)
MAX_EVENT_BYTES = Setting(
    "max_event_bytes",
    "--max-event-bytes",
    as_int,
    64 * 1024,
    env="WORKER_MAX_EVENT_BYTES",
    help="larger input records are dead-lettered",
    check=positive,
)
MAX_SESSIONS = Setting(
    "max_sessions",
    "--max-sessions",
    as_int,
    2_000_000,
    env="WORKER_MAX_SESSIONS",
    help="user sessions held in memory, at most (all served model versions together)",
    check=positive,
)
SESSION_IDLE_TTL_S = Setting(
    "session_idle_ttl_s",
    "--session-idle-ttl-s",
    as_float,
    3600.0,
    env="WORKER_SESSION_IDLE_TTL_S",
    help="a session idle this long is dropped",
    check=positive,
)
FETCH_BUFFER_MB = Setting(
    "fetch_buffer_mb",
    "--fetch-buffer-mb",
    as_int,
    16,
    env="WORKER_FETCH_BUFFER_MB",
    help="records fetched ahead of the loop, at most (the rest of a backlog stays in Kafka)",
    check=positive,
)
PRODUCE_BUFFER_MB = Setting(
    "produce_buffer_mb",
    "--produce-buffer-mb",
    as_int,
    32,
    env="WORKER_PRODUCE_BUFFER_MB",
    help="outputs queued for the broker, at most (produce waits when it is full)",
    check=positive,
)
SHUTDOWN_TIMEOUT_S = Setting(
    "shutdown_timeout_s",
    "--shutdown-timeout-s",
    as_float,
    30.0,
    env="WORKER_SHUTDOWN_TIMEOUT_S",
    help="on SIGTERM, how long draining and committing may take before the worker exits anyway",
    check=non_negative,
)
METRICS_PORT = Setting(
    "metrics_port",
    "--metrics-port",
    as_int,
    9100,
    env="WORKER_METRICS_PORT",
    help="/metrics, /healthz, /readyz; 0 disables",
    check=port,
)
SCORING_BACKEND = Setting(
    "scoring_backend",
    "--scoring-backend",
    OneOf(("auto", "lleaves", "lightgbm")),
    "auto",
    env="WORKER_SCORING_BACKEND",
    help="auto = the compiled lleaves model when installed (pip extra 'fast'), else LightGBM",
)
EXACTLY_ONCE = Setting(
    "exactly_once",
    "--exactly-once",
    as_bool,
    False,
    env="WORKER_EXACTLY_ONCE",
    help="transactional read-process-write; downstream readers use read_committed",
)
TRANSACTIONAL_ID: Setting[str | None] = Setting(
    "transactional_id",
    "--transactional-id",
    as_text,
    None,
    env="WORKER_TRANSACTIONAL_ID",
    help="stable per replica (e.g. the pod name) so a restart fences its predecessor; "
    "default <group>-<host>-<pid>",
)


def transaction_timeout(value: float) -> str | None:
    """Between 1 s and the broker's ``transaction.max.timeout.ms`` default (15 min)."""
    return None if 1 <= value <= 900 else "is not between 1 and 900 seconds"


TRANSACTION_TIMEOUT_S = Setting(
    "transaction_timeout_s",
    "--transaction-timeout-s",
    as_float,
    10.0,
    env="WORKER_TRANSACTION_TIMEOUT_S",
    help="exactly-once: the broker aborts a transaction open longer than this, so a dead "
    "worker's open transaction holds read_committed readers back this long at most (plus the "
    "broker's check interval); a batch's transaction normally lasts milliseconds",
    check=transaction_timeout,
)


def session_timeout(value: float) -> str | None:
    """Within the broker's default bounds (``group.min/max.session.timeout.ms``: 6 s, 30 min)."""
    return None if 6 <= value <= 1800 else "is not between 6 and 1800 seconds"


SESSION_TIMEOUT_S = Setting(
    "session_timeout_s",
    "--session-timeout-s",
    as_float,
    10.0,
    env="WORKER_SESSION_TIMEOUT_S",
    help="consumer group session: a dead worker's partitions move after this long, and a "
    "broker (coordinator) away longer makes every worker drop its partitions and session state "
    "(restored from the changelog); raise it to ride out longer broker restarts",
    check=session_timeout,
)
STATE_CHANGELOG = Setting(
    "state_changelog",
    "--state-changelog",
    as_bool,
    True,
    env="WORKER_STATE_CHANGELOG",
    help="keep session state in a compacted changelog topic and restore it on assignment",
)
MAX_NEW_PRODUCTS = Setting(
    "max_new_products",
    "--max-new-products",
    as_int,
    100_000,
    env="WORKER_MAX_NEW_PRODUCTS",
    help="products the model does not know (cold starts) held in the live catalogue, at most; "
    "the least recently seen is evicted beyond it",
    check=positive,
)
TRENDING_HALF_LIFE_S = Setting(
    "trending_half_life_s",
    "--trending-half-life-s",
    as_float,
    3600.0,
    env="WORKER_TRENDING_HALF_LIFE_S",
    help="event time after which a product's live trending count has halved",
    check=positive,
)
TRENDING: Setting[bool | None] = Setting(
    "trending",
    "--trending",
    as_bool,
    None,
    env="WORKER_TRENDING",
    help="propose each event's category's and the shop's trending products (live counts of this "
    "worker) as candidates; --no-trending keeps to the model's lists, so an answer depends only "
    "on the user's own events. Unset: on at-least-once, off with --exactly-once, whose promise "
    "is that a fault changes no answer (the counts are this worker's, rebuilt at start)",
)
MODEL_POLL_S = Setting(
    "model_poll_s",
    "--model-poll-s",
    as_float,
    5.0,
    env="WORKER_MODEL_POLL_S",
    help="how often the worker reads the models directory's LATEST and CHALLENGER; a change is "
    "loaded and smoke-checked in the background and swapped in between micro-batches (hot "
    "reload); 0 serves the model loaded at start until a restart",
    check=non_negative,
)
MODEL_VERSION: Setting[str | None] = Setting(
    "model_version",
    "--model-version",
    as_text,
    None,
    env="WORKER_MODEL_VERSION",
    help="pin: serve exactly this version of the models directory to every user, ignoring "
    "LATEST and CHALLENGER (no polling)",
)

# The accuracy monitor (`worker monitor`).
MONITOR_GROUP_ID = Setting(
    "group_id",
    "--group-id",
    as_text,
    "recommender-monitor",
    env="WORKER_MONITOR_GROUP_ID",
    help="consumer group of the monitor",
    check=not_empty,
)
MONITOR_K = Setting(
    "k",
    "--k",
    as_int,
    10,
    env="WORKER_MONITOR_K",
    help="suggestions counted per event (hit rate@K)",
    check=positive,
)
ATTRIBUTION_WINDOW_S = Setting(
    "attribution_window_s",
    "--attribution-window-s",
    as_float,
    1800.0,
    env="WORKER_ATTRIBUTION_WINDOW_S",
    help="a purchase is a hit when suggested to the user at most this long before",
    check=positive,
)
MONITOR_WINDOW_S = Setting(
    "window_s",
    "--window-s",
    as_float,
    60.0,
    env="WORKER_MONITOR_WINDOW_S",
    help="length of one accuracy window",
    check=positive,
)
IDLE_PARTITION_GRACE_S = Setting(
    "idle_partition_grace_s",
    "--idle-partition-grace-s",
    as_float,
    5.0,
    help="how long a fully read input partition holds back the event-time watermark",
    check=non_negative,
)
ALLOWED_LATENESS_S = Setting(
    "allowed_lateness_s",
    "--allowed-lateness-s",
    as_float,
    2.0,
    env="WORKER_ALLOWED_LATENESS_S",
    help="how late a record may arrive and still count in its window",
    check=non_negative,
)
SESSION_LOOKBACK_S = Setting(
    "session_lookback_s",
    "--session-lookback-s",
    as_float,
    3600.0,
    env="WORKER_MONITOR_SESSION_LOOKBACK_S",
    help="how far back from a suggestion the monitor looks at its session's browsing events"
    " (discovery and the recency heuristic; bounds the events it keeps per user)",
    check=non_negative,
)
MONITOR_METRICS_PORT = Setting(
    "metrics_port",
    "--metrics-port",
    as_int,
    9101,
    env="WORKER_MONITOR_METRICS_PORT",
    help="/metrics, /healthz, /readyz; 0 disables",
    check=port,
)
EXIT_AT_END = Setting(
    "exit_at_end",
    "--exit-at-end",
    as_bool,
    False,
    help="flush every window and exit once all partitions are read (batch mode)",
    negatable=False,
)
MONITOR_WORKER_GROUP_ID = Setting(
    "worker_group_id",
    "--worker-group-id",
    as_text,
    "recommender-workers",
    env="WORKER_GROUP_ID",
    help="consumer group of the workers, whose lag on the events topic the monitor asks the"
    " broker for (monitor_worker_group_*)",
    check=not_empty,
)
GROUP_LAG_INTERVAL_S = Setting(
    "group_lag_interval_s",
    "--group-lag-interval-s",
    as_float,
    15.0,
    env="WORKER_MONITOR_GROUP_LAG_INTERVAL_S",
    help="seconds between two probes of the workers' group lag at the broker; 0 disables",
    check=non_negative,
)

# Training (`worker train`): flags only, no environment variables; TrainSettings
# (worker/apps/train.py) takes its defaults from these. Not the worker's --top-k / --candidates,
# which read WORKER_TOP_K / WORKER_CANDIDATES: a ConfigMap for the worker must not reach training.
TRAIN_TREES = Setting(
    "num_trees", "--trees", as_int, 200, help="boosting rounds of the ranker", check=positive
)
TRAIN_LEAVES = Setting(
    "num_leaves", "--leaves", as_int, 15, help="leaves per tree", check=AtLeast(2)
)
TRAIN_MAX_QUERIES = Setting(
    "max_train_queries",
    "--max-queries",
    as_int,
    40_000,
    help="training events sampled",
    check=positive,
)
TRAIN_CANDIDATES = Setting(
    "n_candidates",
    "--candidates",
    as_int,
    50,
    help="candidates per event, in training and evaluation",
    check=positive,
)
TRAIN_TOP_K = Setting(
    "top_k",
    "--top-k",
    as_int,
    10,
    help="K of the evaluation's hit rate@K and NDCG@K",
    check=positive,
)
TRAIN_THREADS = Setting(
    "num_threads", "--threads", as_int, 2, help="LightGBM threads", check=positive
)


def fraction(value: float) -> str | None:
    """A share, from 0 to 1."""
    return None if 0.0 <= value <= 1.0 else "is not a fraction from 0 to 1"


TRAIN_MAX_DROPPED_SHARE = Setting(
    "max_dropped_share",
    "--max-dropped-share",
    as_float,
    0.01,
    help="refuse to train (exit code 2) when a larger share of the events, or of the purchase "
    "lines, is unusable (empty user or product id, unknown event type, no event time); a fraction "
    "from 0 to 1",
    check=fraction,
)
TRAIN_REFIT = Setting(
    "refit",
    "--refit",
    as_bool,
    True,
    help="after the evaluation (a model fit on the first 80% of the history's time range, scored "
    "on the rest), fit the served model again on the whole history; --no-refit serves the "
    "evaluated model (faster, but blind to the latest 20%)",
)
TRAIN_PUBLISH = Setting(
    "publish",
    "--publish",
    as_bool,
    True,
    help="make the new model the champion (LATEST) of --models-dir, recorded in its HISTORY.jsonl;"
    " --no-publish only adds it to the registry (then `worker models challenger` or `promote`)",
)
TRAIN_ENGINE = Setting(
    "engine",
    "--engine",
    OneOf(("local", "dask")),
    "local",
    help="where the booster is fit: local (lightgbm.train in this process) or dask (LightGBM's "
    "Dask interface, DaskLGBMRanker, data-parallel on a Dask cluster; needs the `dask` extra); "
    "the tables and training examples are built in this process either way",
)
TRAIN_DASK_SCHEDULER = Setting(
    "dask_scheduler",
    "--dask-scheduler",
    as_text,
    "local",
    help="the Dask scheduler's address (tcp://host:port) for --engine dask; local: a local "
    "cluster of 2 single-threaded worker processes, started and closed by the command",
    check=not_empty,
)
#: The flags of ``worker train`` (with ``--dataset`` and ``--models-dir``), in help order; each is
#: a field of TrainSettings (a test checks that the two agree).
TRAIN_SETTINGS: tuple[Setting[Any], ...] = (
    TRAIN_TREES,
    TRAIN_LEAVES,
    TRAIN_MAX_QUERIES,
    TRAIN_CANDIDATES,
    TRAIN_TOP_K,
    TRAIN_THREADS,
    TRAIN_MAX_DROPPED_SHARE,
    TRAIN_REFIT,
    TRAIN_PUBLISH,
    TRAIN_ENGINE,
    TRAIN_DASK_SCHEDULER,
)

# The simulator (`worker simulate`): flags only. SimulatorSettings (worker/apps/simulate.py)
# takes the generator's defaults from these; --days is the default history length there, and the
# rest are the defaults of produce_live's pacing.
SIMULATE_DAYS = Setting(
    "days", "--days", as_float, 2.0, help="history length for --out (days)", check=positive
)
SIMULATE_USERS = Setting(
    "n_users", "--users", as_int, 20_000, help="simulated users", check=positive
)
SIMULATE_PRODUCTS = Setting(
    "n_products", "--products", as_int, 5000, help="products in the catalogue", check=positive
)
SIMULATE_CATEGORIES = Setting(
    "n_categories",
    "--categories",
    as_int,
    60,
    help="product categories (no more than --products are used)",
    check=positive,
)
SIMULATE_SEED = Setting(
    "seed",
    "--seed",
    as_int,
    1,
    help="seed of the sessions (same seed, same records)",
    check=non_negative,
)
SIMULATE_SPEEDUP = Setting(
    "speedup",
    "--speedup",
    as_float,
    60.0,
    help="simulated seconds per wall second for --produce",
    check=positive,
)
SIMULATE_MAX_RATE: Setting[float | None] = Setting(
    "max_rate",
    "--max-rate",
    as_float,
    None,
    help="cap in records/s for --produce (unset: no cap)",
    check=positive,
)
SIMULATE_DURATION_S = Setting(
    "duration_s", "--duration-s", as_float, 60.0, help="wall seconds to produce", check=positive
)
SIMULATE_CORRUPT_EVERY = Setting(
    "corrupt_every",
    "--corrupt-every",
    as_int,
    0,
    help="send every N-th event malformed (dead-letter demonstration); 0 never",
    check=non_negative,
)
#: The flags of ``worker simulate`` besides the mode and Kafka, in help order; those that are
#: fields of SimulatorSettings build it, the others are arguments of write_history/produce_live.
SIMULATE_SETTINGS: tuple[Setting[Any], ...] = (
    SIMULATE_DAYS,
    SIMULATE_USERS,
    SIMULATE_PRODUCTS,
    SIMULATE_CATEGORIES,
    SIMULATE_SEED,
    SIMULATE_SPEEDUP,
    SIMULATE_MAX_RATE,
    SIMULATE_DURATION_S,
    SIMULATE_CORRUPT_EVERY,
)


def as_instant(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 time (``2024-05-01T00:00:00Z``; without a zone, UTC)
    or of an integer (already epoch milliseconds).

    Raises:
        ValueError: neither.
    """
    import datetime as dt

    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("is not an ISO 8601 time (2024-05-01T00:00:00Z) nor epoch ms") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


# Export (`worker dataset export`): flags only, like train's. --since/--until are required by the
# command (None here means not given).
EXPORT_SINCE: Setting[int | None] = Setting(
    "since_ms",
    "--since",
    as_instant,
    None,
    help="start of the event-time window, included: ISO 8601 (no zone = UTC) or epoch ms",
)
EXPORT_UNTIL: Setting[int | None] = Setting(
    "until_ms",
    "--until",
    as_instant,
    None,
    help="end of the event-time window, excluded: ISO 8601 (no zone = UTC) or epoch ms",
)
EXPORT_GRACE_S = Setting(
    "grace_s",
    "--grace-s",
    as_float,
    300.0,
    help="Kafka timestamps may differ from event times by this much: reading starts at since "
    "minus it and a partition stops at the first record stamped after until plus it",
    check=non_negative,
)
EXPORT_MAX_WAIT_S = Setting(
    "max_wait_s",
    "--max-wait-s",
    as_float,
    60.0,
    help="give up the partitions still unfinished after this long without any record "
    "(an open transaction holds back read_committed); the summary says so",
    check=positive,
)
EXPORT_PROGRESS_S = Setting(
    "progress_s",
    "--progress-s",
    as_float,
    5.0,
    help="seconds between progress lines",
    check=positive,
)
#: The flags of ``worker dataset export`` besides Kafka's and --out.
EXPORT_SETTINGS: tuple[Setting[Any], ...] = (
    EXPORT_SINCE,
    EXPORT_UNTIL,
    EXPORT_GRACE_S,
    EXPORT_MAX_WAIT_S,
    EXPORT_PROGRESS_S,
)


# The report (`worker report`): a PNG of the dashboard's main panels. --since/--until are
# EXPORT_SINCE/EXPORT_UNTIL (the same window of times; --until defaults to now there).
REPORT_OUTPUT = Setting(
    "output",
    "--output",
    as_path,
    Path("report.png"),
    help="the PNG to write",
)
PROMETHEUS_URL: Setting[str | None] = Setting(
    "prometheus_url",
    "--prometheus-url",
    as_text,
    None,
    env="WORKER_PROMETHEUS_URL",
    help="Prometheus HTTP API that scrapes the workers and the monitor (http://prometheus:9090):"
    " the runtime panels are range queries there; unset = accuracy panels only",
    secret=True,  # a URL may carry user:password
)
PROMETHEUS_SELECTOR: Setting[str | None] = Setting(
    "prometheus_selector",
    "--prometheus-selector",
    as_text,
    None,
    help='label matchers added to every runtime query, e.g. namespace="shop" (the dashboard\'s'
    " namespace variable)",
)
REPORT_SCRAPE_INTERVAL_S = Setting(
    "scrape_interval_s",
    "--scrape-interval-s",
    as_int,
    30,
    help="how often that Prometheus scrapes the pods (deploy/'s PodMonitor: 30): the finest"
    " step of the runtime panels, and rate() windows span at least four",
    check=positive,
)
#: The flags of ``worker report`` besides Kafka's.
REPORT_SETTINGS: tuple[Setting[Any], ...] = (
    EXPORT_SINCE,
    EXPORT_UNTIL,
    REPORT_OUTPUT,
    PROMETHEUS_URL,
    PROMETHEUS_SELECTOR,
    REPORT_SCRAPE_INTERVAL_S,
    EXPORT_MAX_WAIT_S,
)

# -- settings objects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach the cluster."""

    bootstrap_servers: str = BOOTSTRAP_SERVERS.field()
    properties: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check the declared fields as the command line does, for objects built in code too.

        Raises:
            SettingError: a declared field's value is unusable.
        """
        validate(self)

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka config: bootstrap, pass-through properties, then role overrides.

        Pass-through properties win over the role's defaults except where ``overrides`` is a
        correctness setting (the caller passes those last on purpose).
        """
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(overrides)
        config.update(self.properties)
        return config

    def __repr__(self) -> str:
        masked = mask(self.properties)
        return f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, properties={masked!r})"


@dataclass(frozen=True)
class TopicSettings:
    """The project's topic names and how many partitions they get when created."""

    events: str = EVENTS_TOPIC.field()
    suggestions: str = SUGGESTIONS_TOPIC.field()
    purchases: str = PURCHASES_TOPIC.field()
    accuracy: str = ACCURACY_TOPIC.field()
    partitions: int = PARTITIONS.field()
    replication_factor: int = 1

    def __post_init__(self) -> None:
        """Check the declared fields as the command line does, for objects built in code too.

        Raises:
            SettingError: a declared field's value is unusable.
        """
        validate(self)

    def dead_letter(self, topic: str) -> str:
        return f"{topic}.dlq"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything ``worker run`` needs besides the model artifact."""

    rules: ClassVar[tuple[AtMost, ...]] = (AtMost(TOP_K, N_CANDIDATES),)

    kafka: KafkaSettings
    topics: TopicSettings
    group_id: str = GROUP_ID.field()
    models_dir: Path = MODELS_DIR.field()
    top_k: int = TOP_K.field()
    n_candidates: int = N_CANDIDATES.field()
    max_batch_size: int = MAX_BATCH_SIZE.field()
    max_batch_wait_ms: int = MAX_BATCH_WAIT_MS.field()
    max_event_bytes: int = MAX_EVENT_BYTES.field()
    max_sessions: int = MAX_SESSIONS.field()
    session_idle_ttl_s: float = SESSION_IDLE_TTL_S.field()
    #: Bound on records fetched ahead of the loop (librdkafka ``queued.max.messages.kbytes``).
    fetch_buffer_mb: int = FETCH_BUFFER_MB.field()
    #: Bound on outputs queued for the broker (librdkafka ``queue.buffering.max.kbytes``).
    produce_buffer_mb: int = PRODUCE_BUFFER_MB.field()
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S.field()
    metrics_port: int = METRICS_PORT.field()
    schema_registry_url: str | None = SCHEMA_REGISTRY_URL.field()
    schema_registry_basic_auth: str | None = SCHEMA_REGISTRY_BASIC_AUTH.field()
    schema_registry_ca_location: Path | None = SCHEMA_REGISTRY_CA_LOCATION.field()
    scoring_threads: int = 1
    # "lleaves" (compiled), "lightgbm", or auto: lleaves if installed
    scoring_backend: str = SCORING_BACKEND.field()
    exactly_once: bool = EXACTLY_ONCE.field()
    transactional_id: str | None = TRANSACTIONAL_ID.field()
    transaction_timeout_s: float = TRANSACTION_TIMEOUT_S.field()
    session_timeout_s: float = SESSION_TIMEOUT_S.field()
    state_changelog: bool = STATE_CHANGELOG.field()
    max_new_products: int = MAX_NEW_PRODUCTS.field()
    trending_half_life_s: float = TRENDING_HALF_LIFE_S.field()
    trending: bool | None = TRENDING.field()
    model_poll_s: float = MODEL_POLL_S.field()
    model_version: str | None = MODEL_VERSION.field()

    def __post_init__(self) -> None:
        """Check the values as the command line does, for objects built in code too.

        Raises:
            SettingError: a value, or the rule top_k <= n_candidates, is broken.
        """
        validate(self)

    @property
    def proposes_trending(self) -> bool:
        """Whether trending products are candidates: as set, else on at-least-once and off in
        exactly-once mode (the live counts are per worker and rebuilt at start, so after a fault
        they would change answers that exactly-once promises to keep identical)."""
        return self.trending if self.trending is not None else not self.exactly_once


@dataclass(frozen=True)
class MonitorSettings:
    """Everything ``worker monitor`` needs."""

    kafka: KafkaSettings
    topics: TopicSettings
    group_id: str = MONITOR_GROUP_ID.field()
    models_dir: Path = MODELS_DIR.field()
    k: int = MONITOR_K.field()
    attribution_window_s: float = ATTRIBUTION_WINDOW_S.field()
    window_s: float = MONITOR_WINDOW_S.field()
    idle_partition_grace_s: float = IDLE_PARTITION_GRACE_S.field()
    allowed_lateness_s: float = ALLOWED_LATENESS_S.field()
    session_lookback_s: float = SESSION_LOOKBACK_S.field()
    metrics_port: int = MONITOR_METRICS_PORT.field()
    schema_registry_url: str | None = SCHEMA_REGISTRY_URL.field()
    schema_registry_basic_auth: str | None = SCHEMA_REGISTRY_BASIC_AUTH.field()
    schema_registry_ca_location: Path | None = SCHEMA_REGISTRY_CA_LOCATION.field()
    exit_at_end: bool = EXIT_AT_END.field()
    worker_group_id: str = MONITOR_WORKER_GROUP_ID.field()
    group_lag_interval_s: float = GROUP_LAG_INTERVAL_S.field()

    def __post_init__(self) -> None:
        """Check the values as the command line does, for objects built in code too.

        Raises:
            SettingError: a value is unusable (k, windows, lateness, grace, port).
        """
        validate(self)
