"""``[pipelines.<name>]`` tables: validated on resolve, errors name the pipeline and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtally._pipeline_config import parse_duration
from runtally.config import ConfigError, resolve


def settings_from(tmp_path: Path, text: str):
    path = tmp_path / "runtally.toml"
    path.write_text(text)
    return resolve({"config_file": path}, env={}), path


class TestPipelines:
    def test_declared_pipelines_beside_a_runtally_table(self, tmp_path):
        s, _ = settings_from(
            tmp_path,
            '[runtally]\nalert_after_failures = 2\n[pipelines.people]\nschedule = "0 3 * * *"\n'
            'timezone = "Europe/Amsterdam"\ngrace = "30m"\nmax_runtime = "2h"\nclub = "rondo"\n',
        )
        people = s.pipelines["people"]
        assert (people.grace_s, people.max_runtime_s) == (1800.0, 7200.0)
        assert s.alert_after_failures == 2

    def test_defaults(self, tmp_path):
        s, _ = settings_from(tmp_path, "[pipelines.all]\n")
        assert (s.pipelines["all"].grace_s, s.pipelines["all"].max_runtime_s) == (3600.0, None)

    @pytest.mark.parametrize(
        ("table", "match"),
        [
            ('schedule = "0 25 * * *"', "bad cron expression '0 25 \\* \\* \\*'"),
            ('schedule = "daily"', "bad cron expression"),
            ('timezone = "Mars/Olympus"', "unknown timezone 'Mars/Olympus'"),
            ('grace = "soon"', "expected a duration"),
            ('shedule = "0 3 * * *"', "unknown setting 'shedule'"),
        ],
    )
    def test_a_bad_table_is_one_error_naming_the_pipeline_and_the_file(
        self, tmp_path, table, match
    ):
        path = tmp_path / "runtally.toml"
        path.write_text(f"[pipelines.people]\n{table}\n")
        with pytest.raises(ConfigError, match=match) as info:
            resolve({"config_file": path}, env={})
        assert str(info.value).startswith(f"pipeline 'people' in config file {path}: ")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("90", 90.0), ("45m", 2700.0), ("1h30m", 5400.0), ("2d", 172800.0), (0.5, 0.5)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "1x", "h", "-5", True, -1])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_the_readme_example_declares_the_seven_seed_pipelines(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("The seven pipelines of the old system:", 1)[1]
    toml = block.split("```toml\n", 1)[1].split("```", 1)[0]
    s, _ = settings_from(tmp_path, toml)
    assert set(s.pipelines) == {
        "people", "nikki", "teams", "functions", "discipline", "freescout", "all"
    }  # fmt: skip
    assert all(p.schedule for p in s.pipelines.values())
    assert s.pipelines["freescout"].alert_urls is not None
