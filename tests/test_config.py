"""The settings resolver: precedence, validation, and errors that name their source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtally import config
from runtally.config import ConfigError, Settings, client_settings, resolve, resolve_or_defaults
from runtally.errors import RuntallyError


@pytest.fixture(autouse=True)
def no_system_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this machine has in /etc or /run must not leak into the tests."""
    monkeypatch.setattr(config, "SYSTEM_CONFIG", tmp_path / "absent-system.toml")
    monkeypatch.setattr(config, "LEGACY_CONFIG", tmp_path / "absent-legacy.toml")
    monkeypatch.setattr(config, "SYSTEM_RUNTIME_DIR", tmp_path / "absent-run")


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), **extra}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class TestPrecedence:
    def test_defaults_need_no_configuration(self, tmp_path: Path) -> None:
        settings = resolve(env=env_for(tmp_path))
        state = tmp_path / "home" / ".local" / "state" / "runtally"
        assert settings.db == state / "dashboard.sqlite"
        assert settings.spool == state / "spool"
        assert settings.synchronous == "FULL"  # acked means durable (issue 11)
        assert settings.busy_timeout_ms == 5000
        assert settings.config_file is None

    def test_file_beats_defaults(self, tmp_path: Path) -> None:
        file = write(
            tmp_path / "c.toml",
            '[runtally]\ndb = "/from/file.sqlite"\nbusy-timeout-ms = 1500\nsynchronous = "full"\n',
        )
        settings = resolve(env=env_for(tmp_path, RUNTALLY_CONFIG=str(file)))
        assert settings.db == Path("/from/file.sqlite")
        assert settings.busy_timeout_ms == 1500
        assert settings.synchronous == "FULL"
        assert settings.config_file == file

    def test_env_beats_file_and_flags_beat_env(self, tmp_path: Path) -> None:
        file = write(tmp_path / "c.toml", 'db = "/from/file.sqlite"\nspool = "/from/file-spool"\n')
        env = env_for(
            tmp_path,
            RUNTALLY_CONFIG=str(file),
            RUNTALLY_DB="/from/env.sqlite",
            RUNTALLY_SOCKET="/from/env.sock",
        )
        settings = resolve(env=env)
        assert settings.db == Path("/from/env.sqlite")
        assert settings.spool == Path("/from/file-spool")
        assert settings.socket == Path("/from/env.sock")
        settings = resolve({"db": "/from/flag.sqlite", "socket": None}, env=env)
        assert settings.db == Path("/from/flag.sqlite")
        assert settings.socket == Path("/from/env.sock")  # None means "not given"

    def test_config_flag_beats_config_variable(self, tmp_path: Path) -> None:
        by_env = write(tmp_path / "env.toml", "queue_events = 1\n")
        by_flag = write(tmp_path / "flag.toml", "queue_events = 2\n")
        env = env_for(tmp_path, RUNTALLY_CONFIG=str(by_env))
        assert resolve(env=env).queue_events == 1
        settings = resolve({"config_file": by_flag}, env=env)
        assert (settings.queue_events, settings.config_file) == (2, by_flag)

    def test_the_system_file_is_read_when_nothing_is_named(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        system = write(tmp_path / "system.toml", "[runtally]\nmax_connections = 9\n")
        monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
        settings = resolve(env=env_for(tmp_path))
        assert (settings.max_connections, settings.config_file) == (9, system)

    def test_the_users_own_file_comes_before_the_system_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        system = write(tmp_path / "system.toml", "[runtally]\nmax_connections = 9\n")
        monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
        env = env_for(tmp_path)
        mine = tmp_path / "home" / ".config" / "runtally" / "runtally.toml"
        assert config.user_config(env) == mine
        mine.parent.mkdir(parents=True)
        write(mine, "[runtally]\nmax_connections = 7\n")
        settings = resolve(env=env)
        assert (settings.max_connections, settings.config_file) == (7, mine)
        # Cron sets no XDG variable: a shell's $XDG_CONFIG_HOME must not change the file.
        (tmp_path / "xdg" / "runtally").mkdir(parents=True)
        write(tmp_path / "xdg" / "runtally" / "runtally.toml", "queue_events = 3\n")
        settings = resolve(env={**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
        assert (settings.max_connections, settings.config_file) == (7, mine)

    def test_values_are_converted_to_their_types(self, tmp_path: Path) -> None:
        settings = resolve(
            {
                "busy_timeout_ms": "250",
                "idle_timeout_s": "1.5",
                "allow_uids": "0, 1001 1002",
                "admin_uids": ["0", 7],
                "socket": "~/x.sock",
            },
            env=env_for(tmp_path),
        )
        assert settings.busy_timeout_ms == 250
        assert settings.idle_timeout_s == 1.5
        assert settings.allow_uids == (0, 1001, 1002)
        assert settings.admin_uids == (0, 7)
        assert settings.socket == Path("~/x.sock").expanduser()
        assert isinstance(settings, Settings)


class TestErrors:
    def test_config_error_is_a_runtally_error(self) -> None:
        assert issubclass(ConfigError, RuntallyError)

    def test_unknown_key_in_file_suggests_the_closest(self, tmp_path: Path) -> None:
        file = write(tmp_path / "c.toml", '[runtally]\nsynchronus = "FULL"\n')
        with pytest.raises(ConfigError) as info:
            resolve(env=env_for(tmp_path, RUNTALLY_CONFIG=str(file)))
        message = str(info.value)
        assert str(file) in message
        assert "'synchronus'" in message
        assert "did you mean 'synchronous'" in message
        assert "\n" not in message

    def test_unknown_key_without_a_close_one(self, tmp_path: Path) -> None:
        file = write(tmp_path / "c.toml", "zzzzzz = 1\n")
        with pytest.raises(ConfigError, match="unknown setting 'zzzzzz'") as info:
            resolve(env=env_for(tmp_path, RUNTALLY_CONFIG=str(file)))
        assert "did you mean" not in str(info.value)

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("busy_timeout_ms", '"soon"'),
            ("synchronous", '"SOMETIMES"'),
            ("idle_timeout_s", "[1]"),
            ("allow_uids", '"0 root"'),
            ("db", "12"),
        ],
    )
    def test_bad_value_in_file_names_file_and_setting(
        self, tmp_path: Path, key: str, value: str
    ) -> None:
        file = write(tmp_path / "c.toml", f"[runtally]\n{key} = {value}\n")
        with pytest.raises(ConfigError) as info:
            resolve(env=env_for(tmp_path, RUNTALLY_CONFIG=str(file)))
        message = str(info.value)
        assert f"config file {file}" in message
        assert f"setting {key!r}" in message

    def test_a_missing_file_names_the_variable_or_flag_that_named_it(self, tmp_path: Path) -> None:
        missing = tmp_path / "missing.toml"
        with pytest.raises(ConfigError, match="does not exist \\(set by RUNTALLY_CONFIG\\)"):
            resolve(env=env_for(tmp_path, RUNTALLY_CONFIG=str(missing)))
        with pytest.raises(ConfigError, match="does not exist \\(set by option --config\\)"):
            resolve(
                {"config_file": missing},
                env=env_for(tmp_path),
                sources={"config_file": "option --config"},
            )

    def test_bad_flag_names_the_flag(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="setting 'synchronous' from option --synchronous"):
            resolve(
                {"synchronous": "fast"},
                env=env_for(tmp_path),
                sources={"synchronous": "option --synchronous"},
            )
        with pytest.raises(ConfigError, match="setting 'queue_events' from argument"):
            resolve({"queue_events": "many"}, env=env_for(tmp_path))

    def test_unreadable_and_missing_files(self, tmp_path: Path) -> None:
        broken = write(tmp_path / "broken.toml", "db = \n")
        with pytest.raises(ConfigError, match=f"cannot read config file {broken}"):
            resolve(env=env_for(tmp_path, RUNTALLY_CONFIG=str(broken)))
        missing = tmp_path / "missing.toml"
        with pytest.raises(ConfigError, match=f"config file {missing} does not exist"):
            resolve({"config_file": missing}, env=env_for(tmp_path))
        not_table = write(tmp_path / "not-table.toml", 'runtally = "x"\n')
        with pytest.raises(ConfigError, match="must be a table"):
            resolve(env=env_for(tmp_path, RUNTALLY_CONFIG=str(not_table)))


class TestFallback:
    def test_a_broken_config_falls_back_with_one_warning(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        broken = write(tmp_path / "c.toml", "[runtally\nspool = 1\n")  # not TOML
        monkeypatch.setenv("RUNTALLY_CONFIG", str(broken))
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        said: list[str] = []
        settings = resolve_or_defaults({"socket": tmp_path / "s.sock"}, warn=said.append)
        assert settings.socket == tmp_path / "s.sock"
        assert settings.spool == tmp_path / "home" / ".local" / "state" / "runtally" / "spool"
        (line,) = said
        assert str(broken) in line
        assert "ignoring the config file" in line

    def test_an_unknown_setting_costs_only_itself(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A typo in the file is skipped with its warning; the file's paths still apply."""
        config = write(
            tmp_path / "c.toml", f"synchronus = 1\nspool = '{tmp_path / 'file-spool'}'\n"
        )
        monkeypatch.setenv("RUNTALLY_CONFIG", str(config))
        said: list[str] = []
        settings = resolve_or_defaults({}, warn=said.append)
        assert settings.spool == tmp_path / "file-spool"
        assert settings.config_file == config
        (line,) = said
        assert "did you mean 'synchronous'" in line
        assert "ignoring the config file" not in line

    def test_a_bad_variable_costs_only_itself(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """RUNTALLY_CAPTURE_ARGV=maybe: that one setting falls back, the file's socket and
        spool (where the daemon listens and replays) still apply, for the client too."""
        config = write(
            tmp_path / "c.toml",
            f"socket = '{tmp_path / 'f.sock'}'\nspool = '{tmp_path / 'f-spool'}'\n"
            "capture_argv = false\n",
        )
        monkeypatch.setenv("RUNTALLY_CONFIG", str(config))
        monkeypatch.setenv("RUNTALLY_CAPTURE_ARGV", "maybe")
        said: list[str] = []
        settings = resolve_or_defaults({}, warn=said.append)
        assert (settings.socket, settings.spool) == (tmp_path / "f.sock", tmp_path / "f-spool")
        assert settings.capture_argv is False  # the file's, the layer below the bad one
        (line,) = said
        assert "RUNTALLY_CAPTURE_ARGV" in line
        client = client_settings({}, warn=said.append)
        expected = (str(tmp_path / "f.sock"), str(tmp_path / "f-spool"))
        assert (client.socket, client.spool) == expected

    def test_a_good_config_is_used(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("RUNTALLY_SPOOL", str(tmp_path / "sp"))
        said: list[str] = []
        assert resolve_or_defaults({}, warn=said.append).spool == tmp_path / "sp"
        assert said == []


def test_importing_config_reads_no_toml() -> None:
    """The client imports config: tomllib only when there is a file to read."""
    code = "import sys, runtally.config; print('tomllib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_relative_paths_resolve_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Absolute once resolved, wherever they came from: the daemon, the CLI and the
    client each resolve in a working directory of their own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNTALLY_SPOOL", "sp/./ool/")
    settings = resolve({"db": "rel/x.sqlite", "socket": "./s.sock"}, env=dict(os.environ))
    assert settings.db == tmp_path / "rel" / "x.sqlite"
    assert settings.socket == tmp_path / "s.sock"
    assert settings.spool == tmp_path / "sp" / "ool"


def test_the_defaults_are_the_same_with_or_without_xdg_variables(tmp_path: Path) -> None:
    """A login shell may set $XDG_STATE_HOME, cron never does: both must find one daemon."""
    cron = {"HOME": str(tmp_path / "home")}
    shell = {**cron, "XDG_STATE_HOME": str(tmp_path / "xdg-state")}
    assert config.default_paths(shell) == config.default_paths(cron)
    assert config.default_paths(cron)["spool"] == (
        tmp_path / "home" / ".local" / "state" / "runtally" / "spool"
    )


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("client_flush_timeout_s", "inf", "<= 3600"),  # an exit that waits for ever
        ("client_flush_timeout_s", "nan", ">= 0"),
        ("client_flush_timeout_s", -1, ">= 0"),
        ("stop_timeout_s", float("inf"), "<="),
        ("idle_timeout_s", 0, "> 0"),
        ("replay_interval_s", "nan", "> 0"),
        ("queue_events", 0, ">= 1"),
        ("web_port", 70000, "<= 65535"),
        ("spool", "", "empty"),
        ("socket", "/tmp/a\0b", "NUL"),
        # found from outside: accepted, then every retention pass or login failed
        ("retention_days", {"runs": 1_000_000}, "<= 100000"),
        ("web_password_hash", "garbage", "pbkdf2_sha256"),
    ],
)
def test_unusable_values_are_refused_by_name(name: str, value: object, says: str) -> None:
    with pytest.raises(ConfigError, match=f"setting '{name}' from argument '{name}'") as err:
        resolve({name: value}, env={})
    assert says in str(err.value)


def test_the_client_skips_an_endless_flush_timeout(tmp_path: Path) -> None:
    """A pipeline's exit must end: inf in the config file falls back to the default."""
    said: list[str] = []
    config_file = write(tmp_path / "c.toml", "client_flush_timeout_s = inf\n")
    env = {"HOME": str(tmp_path), "RUNTALLY_CONFIG": str(config_file)}
    got = client_settings({}, warn=said.append, env=env)
    assert got.flush_timeout_s == 2.0
    assert got.config_file == str(config_file)  # the rest of the file still applies
    (line,) = said
    assert "client_flush_timeout_s" in line


def test_a_choice_and_an_unknown_pipeline_setting_are_said_plainly(tmp_path: Path) -> None:
    """A new user read "Invalid enum value 'FAST' (got 'FAST')" and "Object contains
    unknown field `max_runtim`"; now the allowed values and the known settings."""
    config_file = write(tmp_path / "c.toml", '[runtally]\nsynchronous = "FAST"\n')
    with pytest.raises(ConfigError) as err:
        resolve(env={"HOME": str(tmp_path), "RUNTALLY_CONFIG": str(config_file)})
    assert "'FAST' is not one of NORMAL, FULL" in str(err.value)
    config_file = write(tmp_path / "p.toml", '[pipelines.x]\nmax_runtim = "1h"\n')
    with pytest.raises(ConfigError) as err:
        resolve(env={"HOME": str(tmp_path), "RUNTALLY_CONFIG": str(config_file)})
    assert "unknown setting 'max_runtim'" in str(err.value)
    assert "max_runtime" in str(err.value).split("settings:")[1]
