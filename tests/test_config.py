"""Settings resolution: environment > YAML > default; falsey spellings; invalid keys named."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import SETTINGS, ConfigError, Settings, env_bool, load_settings, markdown_table, yaml_example

ROOT = Path(__file__).resolve().parent.parent


def write_yaml(tmp_path, text: str) -> str:
    path = tmp_path / "instance.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_without_env_or_yaml():
    s = load_settings(environ={})
    assert s.show_status_frame is True
    assert s.show_automode is True
    assert s.port == 8080
    # A long session's transcript passes 50 MB, and the client gives a transcript up for good on a 413.
    assert s.max_upload_bytes == 512 * 1024 * 1024


def test_yaml_overrides_default(tmp_path):
    cfg = write_yaml(tmp_path, "instance:\n  home:\n    show_status_frame: false\n    show_automode: false\n"
                               "server:\n  port: 9000\n")
    s = load_settings(environ={"AGNES_CONFIG": cfg})
    assert (s.show_status_frame, s.show_automode, s.port) == (False, False, 9000)


def test_log_level_in_any_case(tmp_path):
    assert load_settings(environ={"AGNES_LOG_LEVEL": "info"}).log_level == "INFO"
    assert load_settings(environ={"AGNES_CONFIG": write_yaml(tmp_path, "logging:\n  level: Debug\n")}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match="AGNES_LOG_LEVEL: must be one of"):
        load_settings(environ={"AGNES_LOG_LEVEL": "verbose"})


def test_env_overrides_yaml(tmp_path):
    cfg = write_yaml(tmp_path, "instance:\n  home:\n    show_status_frame: false\nserver:\n  port: 9000\n")
    s = load_settings(environ={"AGNES_CONFIG": cfg, "AGNES_HOME_SHOW_STATUS_FRAME": "yes", "AGNES_PORT": "9100"})
    assert s.show_status_frame is True
    assert s.port == 9100


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "False", "no", "No", "off", "OFF", "", "  ", " off "])
def test_falsey_env_values(raw):
    s = load_settings(environ={"AGNES_HOME_SHOW_STATUS_FRAME": raw, "AGNES_HOME_SHOW_AUTOMODE": raw})
    assert s.show_status_frame is False
    assert s.show_automode is False


@pytest.mark.parametrize("raw", ["1", "true", "yes", "on", "TRUE", "enabled", "2"])
def test_truthy_env_values(tmp_path, raw):
    cfg = write_yaml(tmp_path, "instance:\n  home:\n    show_status_frame: false\n")
    s = load_settings(environ={"AGNES_CONFIG": cfg, "AGNES_HOME_SHOW_STATUS_FRAME": raw})
    assert s.show_status_frame is True
    assert env_bool(raw) is True


def test_env_false_beats_yaml_true(tmp_path):
    cfg = write_yaml(tmp_path, "instance:\n  home:\n    show_automode: true\n")
    assert load_settings(environ={"AGNES_CONFIG": cfg, "AGNES_HOME_SHOW_AUTOMODE": "off"}).show_automode is False


@pytest.mark.parametrize("yaml_text, key", [
    ("instance:\n  home:\n    show_status_frame: maybe\n", "instance.home.show_status_frame"),
    ("instance:\n  home:\n    show_stats_frame: true\n", "instance.home.show_stats_frame"),
    ("server:\n  port: -1\n", "server.port"),
    ("server:\n  port: eighty\n", "server.port"),
    ("logging:\n  format: xml\n", "logging.format"),
    ("- just\n- a list\n", "config file"),
])
def test_invalid_yaml_names_the_key(tmp_path, yaml_text, key):
    cfg = write_yaml(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"AGNES_CONFIG": cfg})
    assert key in str(info.value)


def test_invalid_env_names_the_variable():
    with pytest.raises(ConfigError, match="AGNES_PORT"):
        load_settings(environ={"AGNES_PORT": "http"})


@pytest.mark.parametrize("name, raw, why", [
    ("AGNES_DB_PATH", "", "must not be empty"),  # SQLite would use a temporary database and lose it
    ("AGNES_DATA_DIR", "  ", "must not be empty"),
    ("AGNES_SCAN_INTERVAL", "inf", "finite"),  # asyncio.sleep(inf): the worker would never tick again
    ("AGNES_SCAN_INTERVAL", "nan", "finite"),
    ("AGNES_SHUTDOWN_TIMEOUT", "inf", "finite"),
    ("AGNES_PORT", "70000", "1-65535"),
    # A typo must not silently turn SSO sign-in off (it was logged on every request instead).
    ("AGNES_TRUSTED_PROXIES", "10.0.0.0/33", "not an IP address"),
    ("AGNES_TRUSTED_PROXIES", "10.0.0.1 10.0.0.2", "not an IP address"),
    ("AGNES_PUBLIC_URL", "http://", "with a host"),  # /home would print `agnes init --server-url http:`
    ("AGNES_PUBLIC_URL", "ftp://agnes.example.com", "http:// or https://"),
    # "Keep forever" as a huge number put the cutoff before year 1: every ingest failed.
    ("AGNES_RETENTION_DAYS", "999999", "at most 36500"),
])
def test_values_that_would_break_the_service_later_are_refused_at_start(name, raw, why):
    with pytest.raises(ConfigError, match=why) as info:
        load_settings(environ={name: raw})
    assert name in str(info.value)


def test_a_section_with_every_key_commented_out_is_empty_not_an_error(tmp_path):
    """Copying the example and commenting out what is not needed leaves empty (null) sections."""
    cfg = write_yaml(tmp_path, "instance:\n  home:\n    # show_status_frame: false\nserver:\n  port: 9001\n")
    s = load_settings(environ={"AGNES_CONFIG": cfg})
    assert (s.port, s.show_status_frame) == (9001, True)
    with pytest.raises(ConfigError, match="instance.home.show_status_frame"):  # a key itself still needs a value
        load_settings(environ={"AGNES_CONFIG": write_yaml(tmp_path, "instance:\n  home:\n    show_status_frame:\n")})
    with pytest.raises(ConfigError, match="instance.home.show_stats_frame: unknown"):  # and a misspelled one is one
        load_settings(environ={"AGNES_CONFIG": write_yaml(tmp_path, "instance:\n  home:\n    show_stats_frame:\n")})


def test_nan_in_yaml_is_refused(tmp_path):
    cfg = write_yaml(tmp_path, "ingest:\n  scan_interval: .nan\n")
    with pytest.raises(ConfigError, match="ingest.scan_interval.*finite"):
        load_settings(environ={"AGNES_CONFIG": cfg})


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="AGNES_CONFIG"):
        load_settings(environ={"AGNES_CONFIG": str(tmp_path / "nope.yaml")})


def test_trusted_proxies_from_env_is_a_list():
    s = load_settings(environ={"AGNES_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16"})
    assert s.trusted_proxies == ["10.0.0.1", "192.168.0.0/16"]


def test_every_setting_is_a_settings_field_with_the_same_default():
    fields = Settings.__struct_fields__
    assert sorted(s.name for s in SETTINGS) == sorted(fields)
    defaults = Settings()
    for s in SETTINGS:
        assert getattr(defaults, s.name) == s.default, s.name


def test_example_file_is_current_and_loads(tmp_path):
    """instance.yaml.example is generated from SETTINGS and must be committed up to date."""
    example = ROOT / "instance.yaml.example"
    assert example.read_text() == yaml_example(), "regenerate: agnes-home config example > instance.yaml.example"
    assert load_settings(environ={"AGNES_CONFIG": str(example)}) == Settings()


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "README configuration table is stale: agnes-home config table"
