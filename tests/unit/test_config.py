"""Settings: each declared once (worker/config.py), resolved flag > environment > default by
the command line (worker/cli.py), and a bad value, from anywhere, ends the command with exit
code 2 and one line naming the flag and the environment variable. Also the librdkafka
pass-through (``-X``, ``WORKER_KAFKA_<KEY>``, ``@file`` values) and the masking of secrets.
``train`` and ``simulate`` have flag-only settings, declared the same way."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import cli
from worker.apps import simulate
from worker.apps.simulate import SimulatorSettings
from worker.apps.train import TrainSettings
from worker.config import (
    MODELS_DIR,
    SCHEMA_REGISTRY_BASIC_AUTH,
    SCHEMA_REGISTRY_SETTINGS,
    SCHEMA_REGISTRY_URL,
    SIMULATE_SETTINGS,
    TRAIN_SETTINGS,
    AtLeast,
    KafkaSettings,
    MonitorSettings,
    OneOf,
    Setting,
    SettingError,
    TopicSettings,
    WorkerSettings,
    as_bool,
    as_float,
    as_int,
    as_path,
    as_text,
    declared,
    is_secret,
    kafka_properties,
    mask,
    non_negative,
    port,
    positive,
)
from worker.core.errors import ConfigError, InfrastructureError

PASSWORD = "hunter2-Sup3rS3cret"
SETTINGS_CLASSES = (
    KafkaSettings,
    TopicSettings,
    WorkerSettings,
    MonitorSettings,
    TrainSettings,
    SimulatorSettings,
)


def _unique(settings: list[Setting[Any]]) -> list[Setting[Any]]:
    return list({id(s): s for s in settings}.values())


#: What each subcommand reads, by declaration: these and only these are resolved and checked.
KAFKA = [*declared(KafkaSettings), *SCHEMA_REGISTRY_SETTINGS, *declared(TopicSettings)]
READS: dict[str, list[Setting[Any]]] = {
    "topics": KAFKA,
    "run": _unique([*KAFKA, MODELS_DIR, *declared(WorkerSettings), cli.MAX_IDLE_S]),
    "monitor": _unique([*KAFKA, MODELS_DIR, *declared(MonitorSettings)]),
}
PAIRS = [(command, s) for command in ("run", "monitor") for s in READS[command]]


def _pair_id(pair: tuple[str, Setting[Any]]) -> str:
    return f"{pair[0]}{pair[1].flag}"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WORKER_* or KAFKA_BOOTSTRAP_SERVERS from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("WORKER_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)
    # main() installs a SIGTERM handler for run/monitor: not in the test process.
    monkeypatch.setattr(cli, "_exit_cleanly_on_sigterm_while_starting", lambda: None)


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run ``worker <argv>`` in-process; it must exit with 2; return its stderr lines."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


def argv_for(setting: Setting[Any], value: Any) -> list[str]:
    """The command-line arguments that give a setting this value."""
    if setting.is_switch:
        return [setting.flag] if value else ["--no-" + setting.flag[2:]]
    return [setting.flag, text_of(value)]


def text_of(value: Any) -> str:
    """A value as it is written in a flag or an environment variable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def other_value(setting: Setting[Any]) -> Any:
    """A valid value other than the default (the rest of the settings keep theirs)."""
    default = setting.default
    if setting.is_switch:
        return not default
    if isinstance(setting.parse, OneOf):
        return next(o for o in setting.parse.options if o != default)
    if setting.parse is as_int:
        return default + 1
    if setting.parse is as_float:
        return (default or 0.0) + 0.25
    if setting.parse is as_path:
        return Path("elsewhere") / str(default)
    return f"{default or 'value'}-2"


def value_in(args: Any, settings_object: Any, setting: Setting[Any]) -> Any:
    """Where a setting's value ends up: the settings object (or its kafka/topics part)."""
    if setting in declared(KafkaSettings):
        return getattr(settings_object.kafka, setting.name)
    if setting in declared(TopicSettings):
        return getattr(settings_object.topics, setting.name)
    if setting is cli.MAX_IDLE_S:
        return args.max_idle_s
    return getattr(settings_object, setting.name)


def built(command: str, argv: list[str]) -> tuple[Any, Any]:
    """Parse ``worker <command> <argv>`` and build the command's settings object."""
    args = cli.build_parser().parse_args([command, *argv])
    make = cli.worker_settings if command == "run" else cli.monitor_settings
    return args, make(args)


# -- one declaration per setting ----------------------------------------------------------------


@pytest.mark.parametrize("settings_class", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_each_declared_field_takes_name_and_default_from_its_declaration(settings_class) -> None:
    """A settings field and its declaration agree (declared() raises when they do not), and the
    field's default is the declaration's."""
    fields = settings_class.__dataclass_fields__
    for setting in declared(settings_class):
        assert fields[setting.name].default == setting.default
        assert setting.flag.startswith("--")
        assert setting.env is None or setting.env.startswith(("WORKER_", "KAFKA_"))


def test_parsed_defaults_are_the_settings_defaults() -> None:
    """With no flag and no environment, the command line builds exactly the default objects."""
    defaults = {"kafka": KafkaSettings(), "topics": TopicSettings()}
    assert built("run", [])[1] == WorkerSettings(**defaults)
    assert built("monitor", [])[1] == MonitorSettings(**defaults)
    assert built("run", [])[0].max_idle_s is None


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_every_setting_round_trips_from_its_flag_and_its_variable(
    pair: tuple[str, Setting[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each setting a command reads: a value given as the flag, or as the environment
    variable, is the value in the settings object the command runs with."""
    command, setting = pair
    value = other_value(setting)
    args, settings_object = built(command, argv_for(setting, value))
    assert value_in(args, settings_object, setting) == value
    if setting.env:
        monkeypatch.setenv(setting.env, text_of(value))
        args, settings_object = built(command, [])
        assert value_in(args, settings_object, setting) == value


def test_the_flags_keep_their_names_and_variables() -> None:
    """The flags and variables that manifests, compose and the README use (a sample)."""
    run = {s.flag: s.env for s in READS["run"]}
    monitor = {s.flag: s.env for s in READS["monitor"]}
    assert run["--bootstrap-servers"] == "KAFKA_BOOTSTRAP_SERVERS"
    assert run["--candidates"] == "WORKER_CANDIDATES"
    assert run["--partitions"] == "WORKER_TOPIC_PARTITIONS"
    assert run["--metrics-port"] == "WORKER_METRICS_PORT"
    assert run["--transaction-timeout-s"] == "WORKER_TRANSACTION_TIMEOUT_S"
    assert run["--session-timeout-s"] == "WORKER_SESSION_TIMEOUT_S"
    assert monitor["--metrics-port"] == "WORKER_MONITOR_METRICS_PORT"
    assert monitor["--k"] == "WORKER_MONITOR_K"
    assert monitor["--idle-partition-grace-s"] is None
    assert monitor["--exit-at-end"] is None


def test_help_shows_each_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`worker run --help` names every variable it reads and the defaults."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for setting in READS["run"]:
        assert setting.flag in out
        if setting.env:
            assert setting.env in out
    assert "default 65536" in out and "default recommender-workers" in out


# -- precedence -------------------------------------------------------------------------------

_NAME = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,15}", fullmatch=True)
_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "top_k": st.integers(1, 50),  # at most the default --candidates
    "n_candidates": st.integers(10, 10_000),  # at least the default --top-k
    "transaction_timeout_s": st.floats(1.0, 900.0, allow_nan=False),  # the broker's maximum
    "session_timeout_s": st.floats(6.0, 1800.0, allow_nan=False),  # the broker's bounds
}


def valid_values(setting: Setting[Any]) -> st.SearchStrategy[Any]:
    """Values that pass the setting's check while the other settings keep their defaults."""
    if setting.name in _STRATEGIES:
        return _STRATEGIES[setting.name]
    if setting.is_switch:
        return st.booleans()
    if isinstance(setting.parse, OneOf):
        return st.sampled_from(setting.parse.options)
    low = 1 if setting.check is positive else 0
    if setting.parse is as_int:
        return st.integers(low, 65535 if setting.check is port else 10**9)
    if setting.parse is as_float:
        low_f = 1e-3 if setting.check is positive else 0.0
        return st.floats(low_f, 1e7, allow_nan=False)
    if setting.parse is as_path:
        return _NAME.map(Path)
    return _NAME


@given(data=st.data())
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_flag_beats_environment_beats_default(data: st.DataObject) -> None:
    """Property: for any setting of run or monitor, given or not as a flag and as a variable,
    its value is the flag's if given, else the variable's if set, else the default."""
    command, setting = data.draw(st.sampled_from(PAIRS), label="setting")
    values = valid_values(setting)
    flag = data.draw(st.none() | values, label="flag")
    if setting.is_switch and not setting.negatable and flag is False:
        flag = None  # --exit-at-end has no --no- form
    variable = data.draw(st.none() | values, label="env") if setting.env else None
    environ = {setting.env: text_of(variable)} if setting.env and variable is not None else {}
    argv = [] if flag is None else argv_for(setting, flag)
    with mock.patch.dict(os.environ, environ):
        args = cli.build_parser().parse_args([command, *argv])
    expected = flag if flag is not None else variable if variable is not None else setting.default
    assert getattr(args, setting.name) == expected


def test_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty environment variable counts as unset: the default applies."""
    monkeypatch.setenv("WORKER_TOP_K", "")
    monkeypatch.setenv("WORKER_SCHEMA_REGISTRY_URL", "")
    monkeypatch.setenv("WORKER_EXACTLY_ONCE", "")
    args = cli.build_parser().parse_args(["run"])
    assert (args.top_k, args.schema_registry_url, args.exactly_once) == (10, None, False)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("TRUE", True), ("Yes", True)]
    + [("0", False), ("false", False), ("False", False), ("NO", False)],
)
def test_boolean_variables_accept_true_false_words(
    text: str, value: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1/true/yes and 0/false/no, in any case; a flag still wins over the variable."""
    monkeypatch.setenv("WORKER_EXACTLY_ONCE", text)
    monkeypatch.setenv("WORKER_STATE_CHANGELOG", text)
    parser = cli.build_parser()
    args = parser.parse_args(["run"])
    assert (args.exactly_once, args.state_changelog) == (value, value)
    args = parser.parse_args(["run", "--no-exactly-once", "--state-changelog"])
    assert (args.exactly_once, args.state_changelog) == (False, True)


# -- errors: exit code 2, one line naming the flag and the variable -------------------------------


def test_bad_variable_of_the_running_command_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example of the brief: WORKER_TOP_K=abc worker run --models-dir x."""
    monkeypatch.setenv("WORKER_TOP_K", "abc")
    assert fails(["run", "--models-dir", "x"], capsys) == [
        "worker run: error: --top-k / WORKER_TOP_K: 'abc' is not an integer"
    ]


def test_bad_flag_is_the_same_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad flag value reads like a bad variable (no usage block), and wins over a good
    variable."""
    assert fails(["run", "--top-k", "abc"], capsys) == [
        "worker run: error: --top-k / WORKER_TOP_K: 'abc' is not an integer"
    ]


BAD = [
    ("run", "--candidates", "WORKER_CANDIDATES", "x1", "'x1' is not an integer"),
    ("run", "--top-k", "WORKER_TOP_K", "0", "0 is not positive"),
    ("run", "--top-k", "WORKER_TOP_K", "2.5", "'2.5' is not an integer"),
    ("run", "--max-batch-size", "WORKER_MAX_BATCH_SIZE", "0", "0 is not positive"),
    ("run", "--max-batch-wait-ms", "WORKER_MAX_BATCH_WAIT_MS", "-1", "-1 is negative"),
    ("run", "--max-event-bytes", "WORKER_MAX_EVENT_BYTES", "0", "0 is not positive"),
    ("run", "--max-sessions", "WORKER_MAX_SESSIONS", "-5", "-5 is not positive"),
    ("run", "--session-idle-ttl-s", "WORKER_SESSION_IDLE_TTL_S", "nan", "'nan' is not a finite"),
    ("run", "--session-idle-ttl-s", "WORKER_SESSION_IDLE_TTL_S", "0", "0 is not positive"),
    ("run", "--fetch-buffer-mb", "WORKER_FETCH_BUFFER_MB", "0", "0 is not positive"),
    ("run", "--produce-buffer-mb", "WORKER_PRODUCE_BUFFER_MB", "-1", "-1 is not positive"),
    ("run", "--shutdown-timeout-s", "WORKER_SHUTDOWN_TIMEOUT_S", "soon", "'soon' is not a number"),
    ("run", "--metrics-port", "WORKER_METRICS_PORT", "65536", "65536 is not a port number"),
    ("run", "--metrics-port", "WORKER_METRICS_PORT", "-1", "-1 is not a port number"),
    ("run", "--scoring-backend", "WORKER_SCORING_BACKEND", "fast", "'fast' is not one of auto,"),
    ("run", "--exactly-once", "WORKER_EXACTLY_ONCE", "maybe", "'maybe' is not a boolean"),
    ("run", "--state-changelog", "WORKER_STATE_CHANGELOG", "on", "'on' is not a boolean"),
    (
        "run",
        "--transaction-timeout-s",
        "WORKER_TRANSACTION_TIMEOUT_S",
        "0.5",
        "0.5 is not between 1 and 900 seconds",
    ),
    (
        "run",
        "--transaction-timeout-s",
        "WORKER_TRANSACTION_TIMEOUT_S",
        "901",
        "901 is not between 1 and 900 seconds",
    ),
    (
        "run",
        "--session-timeout-s",
        "WORKER_SESSION_TIMEOUT_S",
        "5",
        "5 is not between 6 and 1800 seconds",
    ),
    ("run", "--partitions", "WORKER_TOPIC_PARTITIONS", "0", "0 is not positive"),
    ("run", "--events-topic", "WORKER_EVENTS_TOPIC", " ", "' ' is empty"),
    ("run", "--group-id", "WORKER_GROUP_ID", " ", "' ' is empty"),
    ("topics", "--bootstrap-servers", "KAFKA_BOOTSTRAP_SERVERS", " ", "' ' is empty"),
    ("monitor", "--k", "WORKER_MONITOR_K", "0", "0 is not positive"),
    ("monitor", "--attribution-window-s", "WORKER_ATTRIBUTION_WINDOW_S", "0", "0 is not positive"),
    ("monitor", "--window-s", "WORKER_MONITOR_WINDOW_S", "-60", "-60 is not positive"),
    ("monitor", "--allowed-lateness-s", "WORKER_ALLOWED_LATENESS_S", "-0.5", "-0.5 is negative"),
    ("monitor", "--metrics-port", "WORKER_MONITOR_METRICS_PORT", "99999", "99999 is not a port"),
    ("monitor", "--group-id", "WORKER_MONITOR_GROUP_ID", " ", "' ' is empty"),
]


SWITCHES = ("--exactly-once", "--state-changelog")  # a value only as a variable
BAD_CASES = [(*case, "env") for case in BAD] + [
    (*case, "flag") for case in BAD if case[1] not in SWITCHES
]


@pytest.mark.parametrize(("command", "flag", "variable", "text", "problem", "source"), BAD_CASES)
def test_bad_value_exits_2_with_one_line_naming_flag_and_variable(
    command: str,
    flag: str,
    variable: str,
    text: str,
    problem: str,
    source: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each check, with the value from the variable and from the flag."""
    argv = [command]
    if source == "env":
        monkeypatch.setenv(variable, text)
    else:
        argv.append(f"{flag}={text}")  # = form: values like -1 and blanks stay one argument
    (line,) = fails(argv, capsys)
    assert line.startswith(f"worker {command}: error: {flag} / {variable}: {problem}")


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--idle-partition-grace-s", "-1"], "--idle-partition-grace-s: -1 is negative"),
        (["--idle-partition-grace-s", "x"], "--idle-partition-grace-s: 'x' is not a number"),
    ],
)
def test_bad_flag_only_setting_is_one_line(
    argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A setting without a variable is named by its flag alone."""
    assert fails(["monitor", *argv], capsys) == [f"worker monitor: error: {problem}"]


def test_max_idle_s_of_run_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    """`worker run --max-idle-s` (batch jobs and tests) is a declaration too."""
    assert fails(["run", "--max-idle-s", "-1"], capsys) == [
        "worker run: error: --max-idle-s: -1 is negative"
    ]


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--top-k", "60"], {}),
        ([], {"WORKER_TOP_K": "60"}),
        (["--top-k", "60", "--candidates", "50"], {"WORKER_CANDIDATES": "500"}),
    ],
)
def test_top_k_above_candidates_is_one_line_naming_both(
    argv: list[str],
    environ: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rule between two settings, whichever source each value comes from."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert fails(["run", *argv], capsys) == [
        "worker run: error: --top-k / WORKER_TOP_K: 60 is more than "
        "--candidates / WORKER_CANDIDATES (50)"
    ]


def test_rule_holds_when_both_move(monkeypatch: pytest.MonkeyPatch) -> None:
    """top_k above the default candidates is fine when candidates is raised too."""
    monkeypatch.setenv("WORKER_CANDIDATES", "100")
    assert cli.build_parser().parse_args(["run", "--top-k", "60"]).top_k == 60


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        ("topics", "WORKER_TOP_K"),
        ("topics", "WORKER_MONITOR_K"),
        ("monitor", "WORKER_TOP_K"),
        ("monitor", "WORKER_EXACTLY_ONCE"),
        ("run", "WORKER_MONITOR_WINDOW_S"),
        ("run", "WORKER_MONITOR_METRICS_PORT"),
    ],
)
def test_variables_of_other_commands_are_not_read(
    command: str, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only what the running command reads is checked: one ConfigMap serves every command."""
    monkeypatch.setenv(variable, "abc")
    assert cli.build_parser().parse_args([command]).command == command


def test_help_works_whatever_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--help parses no setting: it shows help and exits 0 even with a bad variable."""
    monkeypatch.setenv("WORKER_TOP_K", "abc")
    for command in ("topics", "run"):
        with pytest.raises(SystemExit) as exited:
            cli.main([command, "--help"])
        assert exited.value.code == 0
    assert "usage: worker run" in capsys.readouterr().out


def test_the_command_line_reports_bad_values_as_the_installed_command_does() -> None:
    """A real process: exit code 2, exactly one stderr line, no traceback; and a bad variable
    that only `run` reads does not stop `topics --help`."""
    environ = {**os.environ, "WORKER_TOP_K": "abc"}
    command = [sys.executable, "-m", "worker.cli"]
    bad = subprocess.run(
        [*command, "run", "--models-dir", "x"], env=environ, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "worker run: error: --top-k / WORKER_TOP_K: 'abc' is not an integer"
    ]
    help_ = subprocess.run([*command, "topics", "--help"], env=environ, capture_output=True)
    assert help_.returncode == 0 and help_.stderr == b""


def test_setting_error_is_an_infrastructure_error() -> None:
    """A SettingError raised after parsing (settings built in code) still ends main() with
    exit code 2: it is a ConfigError, an InfrastructureError."""
    assert issubclass(SettingError, ConfigError)
    assert issubclass(SettingError, InfrastructureError)


# -- secrets in errors ------------------------------------------------------------------------


def test_bad_value_of_a_secret_setting_is_not_echoed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setting with a secret-looking name never shows its value in the error line."""
    parser = cli.SettingsParser(prog="worker test")
    parser.add_settings(Setting("sasl_password_rounds", "--rounds", as_int, 1, env="X_PASSWORD"))
    monkeypatch.setenv("X_PASSWORD", PASSWORD)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line == "worker test: error: --rounds / X_PASSWORD: the value (not shown) is not an integer"
    )
    assert PASSWORD not in line


def test_schema_registry_url_is_treated_as_secret() -> None:
    """A registry URL may carry user:password, the basic auth setting is one: errors about them
    never show them, nor do the reprs of the settings objects that hold them."""
    assert SCHEMA_REGISTRY_URL.hidden and SCHEMA_REGISTRY_BASIC_AUTH.hidden
    settings = WorkerSettings(
        kafka=KafkaSettings(),
        topics=TopicSettings(),
        schema_registry_url=f"https://u:{PASSWORD}@r",
        schema_registry_basic_auth=f"u:{PASSWORD}",
    )
    assert PASSWORD not in repr(settings)
    with pytest.raises(SettingError) as raised:
        Setting("url", "--url", as_int, 0, secret=True).from_text(f"https://u:{PASSWORD}@r")
    assert PASSWORD not in str(raised.value)


# -- value types and checks -----------------------------------------------------------------------


def test_value_types() -> None:
    """int() and float() as Python reads them; finite numbers only; words for booleans."""
    assert as_int(" 7 ") == 7 and as_int("1_000") == 1000
    assert as_float("1e3") == 1000.0
    assert as_text("x y") == "x y" and as_path("a/b") == Path("a/b")
    assert (as_bool(" Yes "), as_bool("no")) == (True, False)
    for parse, text in [(as_int, "1.5"), (as_float, "inf"), (as_float, "nan"), (as_bool, "")]:
        with pytest.raises(ValueError):
            parse(text)
    with pytest.raises(ValueError, match="is not one of a, b"):
        OneOf(("a", "b"))("c")


def test_checks() -> None:
    """positive, non_negative, port, AtLeast: None when fine, else the problem."""
    assert positive(1) is None and positive(0) == "is not positive"
    assert non_negative(0) is None and non_negative(-0.1) == "is negative"
    assert port(0) is None and port(65535) is None and port(65536) is not None
    assert AtLeast(2)(2) is None and AtLeast(2)(1) == "is less than 2"


# -- settings objects built in code ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"top_k": 0}, "--top-k / WORKER_TOP_K"),
        ({"top_k": 60, "n_candidates": 50}, "--top-k / WORKER_TOP_K"),
        ({"n_candidates": 0}, "--candidates / WORKER_CANDIDATES"),
        ({"max_batch_size": 0}, "--max-batch-size / WORKER_MAX_BATCH_SIZE"),
        ({"max_batch_wait_ms": -1}, "--max-batch-wait-ms / WORKER_MAX_BATCH_WAIT_MS"),
        ({"fetch_buffer_mb": 0}, "--fetch-buffer-mb / WORKER_FETCH_BUFFER_MB"),
        ({"produce_buffer_mb": 0}, "--produce-buffer-mb / WORKER_PRODUCE_BUFFER_MB"),
        ({"metrics_port": 70000}, "--metrics-port / WORKER_METRICS_PORT"),
    ],
)
def test_invalid_worker_settings_are_setting_errors(kwargs: dict, names: str) -> None:
    """Settings that cannot work fail fast, built in code too, naming the setting."""
    with pytest.raises(SettingError, match=f"^{names}: "):
        WorkerSettings(kafka=KafkaSettings(), topics=TopicSettings(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"k": 0}, "--k / WORKER_MONITOR_K"),
        ({"attribution_window_s": 0.0}, "--attribution-window-s / WORKER_ATTRIBUTION_WINDOW_S"),
        ({"window_s": -1.0}, "--window-s / WORKER_MONITOR_WINDOW_S"),
        ({"allowed_lateness_s": -1.0}, "--allowed-lateness-s / WORKER_ALLOWED_LATENESS_S"),
        ({"idle_partition_grace_s": -1.0}, "--idle-partition-grace-s"),
        ({"metrics_port": -1}, "--metrics-port / WORKER_MONITOR_METRICS_PORT"),
    ],
)
def test_invalid_monitor_settings_are_setting_errors(kwargs: dict, names: str) -> None:
    """The monitor's settings are checked like the worker's."""
    with pytest.raises(SettingError, match=f"^{names}: "):
        MonitorSettings(kafka=KafkaSettings(), topics=TopicSettings(), **kwargs)


def test_valid_edge_values_are_accepted() -> None:
    """Zero where zero means none (lateness, grace, wait, port 0 disables the listener)."""
    MonitorSettings(
        kafka=KafkaSettings(),
        topics=TopicSettings(),
        allowed_lateness_s=0.0,
        idle_partition_grace_s=0.0,
        metrics_port=0,
    )
    WorkerSettings(
        kafka=KafkaSettings(), topics=TopicSettings(), top_k=50, max_batch_wait_ms=0, metrics_port=0
    )
    with pytest.raises(SettingError, match="--partitions / WORKER_TOPIC_PARTITIONS: 0 is not"):
        TopicSettings(partitions=0)


# -- train and simulate: flag-only settings -----------------------------------------------------

#: The flags of `worker train` and `worker simulate` and their defaults, as they were written
#: before they were declared (scripts, the k8s train job and the README use them).
TRAIN_FLAGS = {
    "--trees": 200,
    "--leaves": 15,
    "--max-queries": 40_000,
    "--candidates": 50,
    "--top-k": 10,
    "--threads": 2,
    "--max-dropped-share": 0.01,
    "--refit": True,
    "--publish": True,
    "--engine": "local",
    "--dask-scheduler": "local",
}
SIMULATE_FLAGS = {
    "--days": 2.0,
    "--users": 20_000,
    "--products": 5000,
    "--categories": 60,
    "--seed": 1,
    "--speedup": 60.0,
    "--max-rate": None,
    "--duration-s": 60.0,
    "--corrupt-every": 0,
}
#: The simulate flags that are not SimulatorSettings fields: arguments of the functions below.
SIMULATE_RUN = {
    "days": simulate.write_history,
    "max_rate": simulate.produce_live,
    "corrupt_every": simulate.produce_live,
}
OFFLINE = [("train", s) for s in TRAIN_SETTINGS] + [("simulate", s) for s in SIMULATE_SETTINGS]
OFFLINE_ARGV = {"train": ["--dataset", "ds"], "simulate": ["--out", "ds"]}


def offline_built(command: str, argv: list[str]) -> tuple[Any, Any]:
    """Parse ``worker train|simulate <required> <argv>``; build the command's settings object."""
    args = cli.build_parser().parse_args([command, *OFFLINE_ARGV[command], *argv])
    make = cli.train_settings if command == "train" else cli.simulator_settings
    return args, make(args)


def test_train_and_simulate_keep_their_flags_and_defaults_without_variables() -> None:
    """Each flag of train and simulate is one declaration: the same names and defaults as
    before, no environment variable; train's are exactly TrainSettings' declared fields, and
    simulate's are SimulatorSettings' plus the history length and the pacing."""
    assert {s.flag: s.default for s in TRAIN_SETTINGS} == TRAIN_FLAGS
    assert {s.flag: s.default for s in SIMULATE_SETTINGS} == SIMULATE_FLAGS
    assert all(s.env is None for s in (*TRAIN_SETTINGS, *SIMULATE_SETTINGS))
    assert set(declared(TrainSettings)) == set(TRAIN_SETTINGS)
    generator = set(declared(SimulatorSettings))
    assert generator <= set(SIMULATE_SETTINGS)
    assert {s.name for s in set(SIMULATE_SETTINGS) - generator} == {
        "days",
        "speedup",
        "max_rate",
        "duration_s",
        "corrupt_every",
    }


def test_train_and_simulate_parsed_defaults_are_the_dataclass_defaults() -> None:
    """With no flag, the command lines build exactly TrainSettings() and SimulatorSettings(),
    and the other simulate flags default to what write_history and produce_live default to."""
    assert offline_built("train", [])[1] == TrainSettings()
    args, generator = offline_built("simulate", [])
    assert generator == SimulatorSettings()
    for name, function in SIMULATE_RUN.items():
        assert getattr(args, name) == inspect.signature(function).parameters[name].default
    assert (args.speedup, args.duration_s) == (60.0, 60.0)
    assert args.days == simulate.DEFAULT_HISTORY_DAYS


@pytest.mark.parametrize("pair", OFFLINE, ids=_pair_id)
def test_every_train_and_simulate_flag_reaches_its_settings(
    pair: tuple[str, Setting[Any]],
) -> None:
    """A value given as the flag is the value of the settings field (or of the parsed
    argument, for simulate's history length and pacing)."""
    command, setting = pair
    value = 5.0 if setting.default is None else other_value(setting)
    args, settings_object = offline_built(command, argv_for(setting, value))
    assert getattr(args, setting.name) == value
    if setting in declared(type(settings_object)):
        assert getattr(settings_object, setting.name) == value


def test_valid_train_command_line_builds_its_settings() -> None:
    """`worker train` with every flag: the TrainSettings the tests and chaos harness build."""
    argv = ["--trees", "30", "--leaves", "15", "--max-queries", "3000", "--candidates", "40"]
    args, settings_object = offline_built("train", [*argv, "--top-k", "5", "--threads", "1"])
    assert settings_object == TrainSettings(
        num_trees=30,
        num_leaves=15,
        max_train_queries=3000,
        n_candidates=40,
        top_k=5,
        num_threads=1,
    )
    assert (args.dataset, args.models_dir) == (Path("ds"), MODELS_DIR.default)


def test_valid_simulate_command_line_builds_its_settings() -> None:
    """`worker simulate --produce` as the README and the demo run it, and `--out` with the
    generator's flags."""
    args = cli.build_parser().parse_args(
        ["simulate", "--produce", "--speedup", "20", "--max-rate", "500", "--duration-s", "600"]
        + ["--corrupt-every", "2000", "--users", "3000", "--products", "800"]
        + ["--categories", "20", "--seed", "3"]
    )
    assert (args.produce, args.out) == (True, None)
    assert cli.simulator_settings(args) == SimulatorSettings(
        n_products=800, n_categories=20, n_users=3000, seed=3
    )
    assert (args.speedup, args.max_rate, args.duration_s, args.corrupt_every) == (
        20.0,
        500.0,
        600.0,
        2000,
    )
    args, _ = offline_built("simulate", ["--days", "0.5"])
    assert (args.out, args.produce, args.days) == (Path("ds"), False, 0.5)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["train", "--dataset", "x", "--trees", "abc"], "--trees: 'abc' is not an integer"),
        (["train", "--dataset", "x", "--trees", "0"], "--trees: 0 is not positive"),
        (["train", "--dataset", "x", "--leaves", "1"], "--leaves: 1 is less than 2"),
        (["train", "--dataset", "x", "--max-queries=-5"], "--max-queries: -5 is not positive"),
        (["train", "--dataset", "x", "--candidates", "1.5"], "--candidates: '1.5' is not an"),
        (["train", "--dataset", "x", "--top-k", "0"], "--top-k: 0 is not positive"),
        (["train", "--dataset", "x", "--threads", "0"], "--threads: 0 is not positive"),
        (["simulate", "--out", "d", "--users=-1"], "--users: -1 is not positive"),
        (["simulate", "--out", "d", "--products", "0"], "--products: 0 is not positive"),
        (["simulate", "--out", "d", "--categories", "x"], "--categories: 'x' is not an integer"),
        (["simulate", "--out", "d", "--seed=-1"], "--seed: -1 is negative"),
        (["simulate", "--out", "d", "--days", "0"], "--days: 0 is not positive"),
        (["simulate", "--out", "d", "--days", "nan"], "--days: 'nan' is not a finite number"),
        (["simulate", "--produce", "--speedup", "0"], "--speedup: 0 is not positive"),
        (["simulate", "--produce", "--max-rate", "0"], "--max-rate: 0 is not positive"),
        (["simulate", "--produce", "--max-rate", "x"], "--max-rate: 'x' is not a number"),
        (["simulate", "--produce", "--duration-s=-1"], "--duration-s: -1 is not positive"),
        (["simulate", "--produce", "--corrupt-every=-1"], "--corrupt-every: -1 is negative"),
    ],
)
def test_bad_train_or_simulate_value_exits_2_with_one_line_naming_the_flag(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """As for run and monitor: exit code 2, one line, the flag alone (no variable)."""
    (error,) = fails(argv, capsys)
    assert error.startswith(f"worker {argv[0]}: error: {line}")


def test_train_and_simulate_read_no_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """train's --top-k and --candidates are not the worker's: WORKER_TOP_K, WORKER_CANDIDATES
    (even unusable) do not reach training, whose flags have no environment fallback."""
    monkeypatch.setenv("WORKER_TOP_K", "abc")
    monkeypatch.setenv("WORKER_CANDIDATES", "3")
    monkeypatch.setenv("WORKER_USERS", "abc")
    assert offline_built("train", [])[1] == TrainSettings()
    assert offline_built("simulate", [])[1] == SimulatorSettings()


def test_train_and_simulate_keep_their_required_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--dataset is required; --out and --produce are a required, exclusive pair (argparse's
    usage and error, exit code 2)."""
    assert fails(["train"], capsys)[-1].endswith("required: --dataset")
    assert fails(["simulate"], capsys)[-1].endswith("--out --produce is required")
    assert fails(["simulate", "--out", "d", "--produce"], capsys)[-1].endswith(
        "not allowed with argument --out"
    )


def test_train_and_simulate_settings_built_in_code_are_checked() -> None:
    """TrainSettings and SimulatorSettings check their flagged fields like the command line
    does; the constructors the tests, the chaos harness and the benchmark use still work."""
    with pytest.raises(SettingError, match="^--trees: 0 is not positive$"):
        TrainSettings(num_trees=0)
    with pytest.raises(SettingError, match="^--users: -1 is not positive$"):
        SimulatorSettings(n_users=-1)
    quick = replace(
        TrainSettings(), num_trees=30, num_leaves=15, max_train_queries=3000, min_data_in_leaf=20
    )
    assert (quick.num_trees, quick.top_k, quick.history) == (30, 10, 20)
    assert TrainSettings(covis_neighbours=2, category_top=2, global_top=3).covis_neighbours == 2
    assert SimulatorSettings(n_products=800, n_categories=20, n_users=3000, seed=3).seed == 3


# -- worker-dev --------------------------------------------------------------------------------


def test_worker_dev_uses_the_same_declarations(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """chaos --bootstrap-servers reads KAFKA_BOOTSTRAP_SERVERS (unset: its own broker);
    --models-dir reads WORKER_MODELS_DIR; demo --work-dir reads WORKER_DEMO_DIR."""
    from devtools import cli as dev

    parser = dev.build_parser()
    chaos = parser.parse_args(["chaos"])
    assert (chaos.bootstrap_servers, chaos.models_dir) == (None, Path("models"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b:9092")
    monkeypatch.setenv("WORKER_MODELS_DIR", "/models")
    monkeypatch.setenv("WORKER_DEMO_DIR", "/tmp/demo")
    chaos = parser.parse_args(["chaos", "--bootstrap-servers", "c:9092"])
    assert (chaos.bootstrap_servers, chaos.models_dir) == ("c:9092", Path("/models"))
    assert parser.parse_args(["chaos"]).bootstrap_servers == "b:9092"
    demo = parser.parse_args(["demo"])
    assert (demo.work_dir, demo.models_dir) == (Path("/tmp/demo"), Path("/models"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", " ")
    with pytest.raises(SystemExit) as exited:
        dev.main(["chaos"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "worker-dev chaos: error: --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS: ' ' is empty"
    ]


# -- librdkafka pass-through --------------------------------------------------------------------


def test_environment_variables_become_dotted_librdkafka_properties() -> None:
    """WORKER_KAFKA_SASL_USERNAME -> sasl.username; other variables and empty values ignored."""
    environ = {
        "WORKER_KAFKA_SASL_USERNAME": "alice",
        "WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "WORKER_KAFKA_EMPTY": "",
        "WORKER_TOP_K": "5",
        "KAFKA_SASL_PASSWORD": "not ours",
    }
    assert kafka_properties(None, environ) == {
        "sasl.username": "alice",
        "security.protocol": "SASL_SSL",
    }


def test_cli_pairs_pass_through_and_override_the_environment() -> None:
    """-X key=value pairs are taken as is (values may contain '='), after the environment."""
    props = kafka_properties(
        [
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.username=bob",
            "sasl.oauthbearer.config=scope=a b=c",
        ],
        {"WORKER_KAFKA_SASL_USERNAME": "alice"},
    )
    assert props == {
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bob",
        "sasl.oauthbearer.config": "scope=a b=c",
    }


def test_at_file_values_are_read_from_the_file(tmp_path: Path) -> None:
    """A value '@/path' is the file's content, stripped (secrets mounted as files), from the
    environment and from -X alike."""
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    props = kafka_properties(
        [f"ssl.key.password=@{secret}"], {"WORKER_KAFKA_SASL_PASSWORD": f"@{secret}"}
    )
    assert props == {"sasl.password": PASSWORD, "ssl.key.password": PASSWORD}


def test_unreadable_at_file_is_config_error(tmp_path: Path) -> None:
    """A missing @file is a ConfigError naming the key, never a raw OSError."""
    with pytest.raises(ConfigError, match="sasl.password"):
        kafka_properties([f"sasl.password=@{tmp_path / 'missing'}"], {})
    with pytest.raises(ConfigError):
        kafka_properties(None, {"WORKER_KAFKA_SASL_PASSWORD": f"@{tmp_path / 'missing'}"})


@pytest.mark.parametrize("pair", ["sasl.username", "=value", ""])
def test_malformed_cli_pair_is_config_error(pair: str) -> None:
    """-X without 'key=' is a ConfigError."""
    with pytest.raises(ConfigError):
        kafka_properties([pair], {})


def test_malformed_cli_pair_error_never_echoes_a_secret_value() -> None:
    """The ConfigError for a malformed pair may name the key, never the secret after it."""
    with pytest.raises(ConfigError) as raised:
        kafka_properties([f"sasl.password:{PASSWORD}"], {})
    assert PASSWORD not in str(raised.value)


def test_kafka_properties_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, the process environment is used."""
    monkeypatch.setenv("WORKER_KAFKA_CLIENT_ID", "recommender-7")
    assert kafka_properties(None)["client.id"] == "recommender-7"


# -- masking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "SASL.PASSWORD",
        "sasl.oauthbearer.client.secret",
        "ssl.key.pem",
        "sasl.jaas.config",
        "token",
    ],
)
def test_mask_hides_secret_values(key: str) -> None:
    """Secret-looking keys have their value replaced by ***; the key stays visible."""
    assert is_secret(key)
    assert mask({key: PASSWORD, "sasl.username": "alice"}) == {key: "***", "sasl.username": "alice"}


def test_mask_keeps_ordinary_values_and_copies() -> None:
    """Non-secret values are kept; the input mapping is not modified."""
    props = {"security.protocol": "SSL", "sasl.password": PASSWORD}
    masked = mask(props)
    assert masked["security.protocol"] == "SSL"
    assert props["sasl.password"] == PASSWORD


def test_repr_of_settings_never_contains_a_password() -> None:
    """repr/str of KafkaSettings, and of the WorkerSettings holding it, mask secrets, while
    client_config still hands the real value to the client."""
    kafka = KafkaSettings(
        bootstrap_servers="broker:9093",
        properties={
            "sasl.username": "alice",
            "sasl.password": PASSWORD,
            "ssl.key.password": PASSWORD,
        },
    )
    worker = WorkerSettings(kafka=kafka, topics=TopicSettings())
    for text in (repr(kafka), str(kafka), repr(worker), str(worker)):
        assert PASSWORD not in text
        assert "alice" in text and "broker:9093" in text
    assert kafka.client_config()["sasl.password"] == PASSWORD


def test_client_config_pass_through_wins_over_role_defaults() -> None:
    """bootstrap first, then role overrides, then pass-through properties."""
    kafka = KafkaSettings("b:1", {"linger.ms": "50"})
    config = kafka.client_config(**{"linger.ms": 5, "enable.idempotence": True})
    assert config == {"bootstrap.servers": "b:1", "linger.ms": "50", "enable.idempotence": True}


@pytest.mark.parametrize("command", ["topics", "simulate", "train", "run", "monitor"])
def test_every_command_takes_the_log_settings(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--log-level / WORKER_LOG_LEVEL and --log-format / WORKER_LOG_FORMAT are declared once and
    resolved for every command (flag > environment > default), any case for the level."""
    required = {"simulate": ["--out", "d"], "train": ["--dataset", "d"]}.get(command, [])
    parser = cli.build_parser()
    monkeypatch.delenv("WORKER_LOG_LEVEL", raising=False)
    monkeypatch.delenv("WORKER_LOG_FORMAT", raising=False)
    args = parser.parse_args([command, *required])
    assert (args.log_level, args.log_format) == ("info", "auto")
    monkeypatch.setenv("WORKER_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("WORKER_LOG_FORMAT", "console")
    args = parser.parse_args([command, *required])
    assert (args.log_level, args.log_format) == ("debug", "console")
    args = parser.parse_args([command, *required, "--log-level", "warning", "--log-format", "json"])
    assert (args.log_level, args.log_format) == ("warning", "json")


def test_bad_log_setting_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, an unknown level silently meant info and an unknown format meant json."""
    monkeypatch.setenv("WORKER_LOG_LEVEL", "loud")
    assert fails(["topics"], capsys) == [
        "worker topics: error: --log-level / WORKER_LOG_LEVEL: 'loud' is not one of debug, "
        "info, warning, error"
    ]
    monkeypatch.delenv("WORKER_LOG_LEVEL")
    monkeypatch.setenv("WORKER_LOG_FORMAT", "xml")
    assert fails(["topics"], capsys) == [
        "worker topics: error: --log-format / WORKER_LOG_FORMAT: 'xml' is not one of auto, json, "
        "console"
    ]


@pytest.mark.parametrize(
    ("exactly_once", "trending", "proposes"),
    [(False, None, True), (True, None, False), (True, True, True), (False, False, False)],
)
def test_trending_is_off_by_default_only_in_exactly_once_mode(
    exactly_once: bool, trending: bool | None, proposes: bool
) -> None:
    """Exactly-once promises that a fault changes no answer; the trending counts are per worker
    and rebuilt at start, so they are proposed there only when asked for."""
    settings = WorkerSettings(
        kafka=KafkaSettings(), topics=TopicSettings(), exactly_once=exactly_once, trending=trending
    )
    assert settings.proposes_trending is proposes


def test_the_transaction_timeout_is_short_by_default_and_reaches_the_producers() -> None:
    """Exactly-once: 10 s (Kafka Streams' exactly-once-v2 default), so a dead worker's open
    transaction stops holding read_committed readers back within seconds even when its
    replacement has another transactional id; the producers get it as transaction.timeout.ms."""
    from worker.apps.serve import producer_overrides

    base = {"kafka": KafkaSettings(), "topics": TopicSettings(), "exactly_once": True}
    assert WorkerSettings(**base).transaction_timeout_s == 10.0
    assert producer_overrides(WorkerSettings(**base))["transaction.timeout.ms"] == 10000
    settings = WorkerSettings(**base, transaction_timeout_s=2.5)
    assert producer_overrides(settings)["transaction.timeout.ms"] == 2500
    at_least_once = {**base, "exactly_once": False}
    assert "transaction.timeout.ms" not in producer_overrides(WorkerSettings(**at_least_once))


def test_the_session_timeout_reaches_the_consumer_with_heartbeats_well_inside_it() -> None:
    """10 s by default (a killed worker's partitions move within seconds); an operator may raise
    it so that a broker restart longer than that does not cost every worker its state."""
    from worker.apps.serve import consumer_overrides

    base = {"kafka": KafkaSettings(), "topics": TopicSettings()}
    overrides = consumer_overrides(WorkerSettings(**base))
    assert (overrides["session.timeout.ms"], overrides["heartbeat.interval.ms"]) == (10000, 1000)
    overrides = consumer_overrides(WorkerSettings(**base, session_timeout_s=45.0))
    assert (overrides["session.timeout.ms"], overrides["heartbeat.interval.ms"]) == (45000, 1000)
