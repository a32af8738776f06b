"""Settings from OTTO_FARM_* variables and the config file."""

from __future__ import annotations

import pytest

from otto_farm import celery_app
from otto_farm.errors import InputError
from otto_farm.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("BROKER_URL", "RESULT_BACKEND", "STORE_URL", "WORK_DIR", "HOME", "CONFIG", "AGENT_COMMAND"):
        monkeypatch.delenv(f"OTTO_FARM_{name}", raising=False)
    monkeypatch.chdir(tmp_path)


def test_no_broker_means_the_embedded_default_in_the_users_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    s = Settings.load()
    assert s.embedded and s.home == tmp_path / "state" / "otto-farm"  # whatever the current directory
    e = s.with_embedded()
    assert e.broker_url == f"redis+socket://{tmp_path}/state/otto-farm/redis.sock"
    assert e.resolved_store_url == f"unix://{tmp_path}/state/otto-farm/redis.sock"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # XDG: ignored, as if unset
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert Settings.load().home == tmp_path / "user" / ".local" / "state" / "otto-farm"


def test_a_home_too_long_for_a_socket_puts_it_in_the_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    home = tmp_path / ("h" * 120)
    s = Settings(home=home)
    assert s.socket_path.parent == tmp_path and len(str(s.socket_path)) < 100
    assert (
        Settings(home=home).socket_path == s.socket_path != Settings(home=tmp_path / ("k" * 120)).socket_path
    )
    assert s.socket_path in s.hidden_paths()  # out of the home, still hidden from task commands


def test_config_file_then_environment(tmp_path, monkeypatch):
    (tmp_path / "otto-farm.toml").write_text('broker_url = "redis://a:6379/0"\nwork_dir = "/w"\n')
    monkeypatch.setenv("OTTO_FARM_BROKER_URL", "redis://b:6379/0")
    s = Settings.load()
    assert s.broker_url == "redis://b:6379/0" and str(s.work_dir) == "/w"
    assert s.resolved_store_url == "redis://b:6379/0"


def test_named_config_file_must_exist(monkeypatch):
    monkeypatch.setenv("OTTO_FARM_CONFIG", "missing.toml")
    with pytest.raises(InputError, match="OTTO_FARM_CONFIG: no such file"):
        Settings.load()


def test_unknown_key_in_config_file_is_named(tmp_path):
    (tmp_path / "otto-farm.toml").write_text('brokr_url = "redis://a"\n')
    with pytest.raises(InputError, match="otto-farm.toml: brokr_url"):
        Settings.load()


def test_store_must_be_redis(monkeypatch):
    monkeypatch.setenv("OTTO_FARM_BROKER_URL", "amqp://guest@localhost//")
    monkeypatch.setenv("OTTO_FARM_STORE_URL", "postgres://x")
    with pytest.raises(InputError, match="store_url"):
        _ = Settings.load().resolved_store_url


def test_a_bad_value_in_the_environment_is_blamed_on_its_variable(monkeypatch):
    monkeypatch.setenv("OTTO_FARM_LEASE_S", "abc")
    with pytest.raises(InputError, match=r"^OTTO_FARM_LEASE_S: .*number") as caught:
        Settings.load()
    assert "otto-farm.toml" not in str(caught.value)  # there is none


def test_configure_moves_the_result_backend_with_the_broker(settings, tmp_path):
    """A process that points its app at another Redis waits for results there: Celery caches its result
    backend, and left alone a chord sent after `configure` would subscribe on the first Redis."""
    url = "redis://127.0.0.1:1/0"  # never connected to: the backend is built lazily
    before = celery_app.app.backend
    try:
        celery_app.configure(Settings(home=tmp_path, broker_url=url, result_backend=url, store_url=url))
        moved = celery_app.app.backend
        assert moved is not before and moved.url == url
    finally:
        celery_app.configure(settings)
    assert celery_app.app.backend.url == before.url
