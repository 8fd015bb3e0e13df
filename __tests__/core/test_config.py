import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from cryptomarket.core.config import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
FERNET_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, url-safe base64


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test sees only the variables it sets (no developer .env, no inherited settings)."""
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def test_defaults_follow_the_spec() -> None:
    settings = load_settings()
    assert settings.DEBUG is True
    assert settings.DERIBIT_WS_URL == "wss://test.deribit.com/ws/api/v2"
    assert settings.DERIBIT_POOL_SIZE == 10
    assert settings.TRACKED_TICKERS == ["btc_usd", "eth_usd"]
    assert settings.SSE_MAX_STREAMS_PER_USER == 5
    assert settings.SSE_MAX_STREAMS_PER_ACCOUNT == 10
    assert settings.SSE_MAX_STREAMS == 10_000
    assert timedelta(hours=27) == settings.SESSION_TTL
    assert settings.HISTORY_RETENTION_DAYS is None
    assert (settings.APP_HOST, settings.APP_PORT) == ("127.0.0.1", 8003)
    assert settings.distributed is False


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKED_TICKERS", " btc_usd, sol_usdc ,btc_usd")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example,http://localhost:3000")
    monkeypatch.setenv("ENCRYPTION_KEYS", f"{FERNET_KEY},{FERNET_KEY}")
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@cache:6380/0")
    settings = load_settings()
    assert settings.TRACKED_TICKERS == ["btc_usd", "sol_usdc"]
    assert settings.CORS_ORIGINS == ["https://a.example", "http://localhost:3000"]
    assert len(settings.ENCRYPTION_KEYS) == 2
    assert settings.distributed is True


def test_settings_are_read_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("APP_PORT=9000\nSESSION_TTL=PT1H\n")
    settings = load_settings()
    assert settings.APP_PORT == 9000
    assert timedelta(hours=1) == settings.SESSION_TTL


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DERIBIT_POOL_SIZE", "many"),
        ("DERIBIT_POOL_SIZE", "64"),
        ("APP_PORT", "70000"),
        ("DEBUG", "perhaps"),
        ("PROJECT_MODE", "staging"),
        ("DERIBIT_WS_URL", "https://test.deribit.com"),
        ("TRACKED_TICKERS", "BTC USD"),
        ("ENCRYPTION_KEYS", "not-a-key"),
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "localhost:6379"),
        ("CORS_ORIGINS", "example.com"),
        ("SESSION_TTL", "-5"),
        ("SESSION_TTL", "300000000000"),  # past the calendar: every sign-in would overflow
        ("SESSION_TTL", "P400D"),
        ("HISTORY_RETENTION_DAYS", "0"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting {name}:")


def test_encryption_keys_are_required_outside_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBUG", "False")
    with pytest.raises(SettingsError, match="ENCRYPTION_KEYS is required"):
        load_settings()
    monkeypatch.setenv("ENCRYPTION_KEYS", FERNET_KEY)
    assert load_settings().DEBUG is False


def test_env_example_lists_every_setting_with_its_default() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    listed = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    assert set(listed) == set(Settings.model_fields)
    defaults = Settings(_env_file=None)
    for name, value in listed.items():
        if value:  # an empty value stands for "unset"; the rest must parse to the default
            assert getattr(Settings(**{name: value}, _env_file=None), name) == getattr(
                defaults, name
            ), name


def test_the_command_stops_with_one_line_on_a_bad_setting(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DERIBIT_POOL_SIZE": "zero"}
    result = subprocess.run(
        [sys.executable, "-m", "cryptomarket", "serve"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cryptomarket: invalid setting DERIBIT_POOL_SIZE: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]
    assert "Traceback" not in result.stdout + result.stderr
