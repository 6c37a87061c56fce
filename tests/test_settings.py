"""The settings model: TOML file, environment overrides, the documented names and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqtt_speaker.settings import ConfigError, Settings, default_site, load_settings
from mqtt_speaker.speech.vocabulary import EngineChoice

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "config.example.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("MQTT_SPEAKER_", "CARTESIA_")):
            monkeypatch.delenv(name)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    monkeypatch.setenv("MQTT_SPEAKER_CONFIG", str(empty))


def test_defaults() -> None:
    s = load_settings()
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.username, s.mqtt.password) == ("localhost", 1883, None, None)
    assert s.base_topic == "mqtt-speaker" and s.site == default_site()
    assert s.engine is EngineChoice.AUTO and not s.use_cartesia
    assert s.cartesia.url == "wss://api.cartesia.ai" and s.cartesia.model == "sonic-3"
    assert s.cartesia.voice == "6ccbfb76-1fc6-48f7-b71d-91ac6298247b" and s.cartesia.language == "en"
    assert s.audio.device is None and s.audio.output_dir is None
    assert s.max_text_length == 2000


def test_the_documented_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "MQTT_SPEAKER_MQTT__HOST": "broker.lan",
        "MQTT_SPEAKER_MQTT__PORT": "8883",
        "MQTT_SPEAKER_MQTT__USERNAME": "speaker",
        "MQTT_SPEAKER_MQTT__PASSWORD": "hunter2",
        "MQTT_SPEAKER_SITE": "kitchen",
        "MQTT_SPEAKER_BASE_TOPIC": "home/tts",
        "MQTT_SPEAKER_ENGINE": "espeak",
        "CARTESIA_API_KEY": "sk_car_1",
        "MQTT_SPEAKER_CARTESIA__URL": "ws://127.0.0.1:9",
        "MQTT_SPEAKER_CARTESIA__MODEL": "sonic-3-2026-01-12",
        "MQTT_SPEAKER_CARTESIA__VOICE": "voice-1",
        "MQTT_SPEAKER_CARTESIA__LANGUAGE": "de",
        "MQTT_SPEAKER_AUDIO__DEVICE": "3",
        "MQTT_SPEAKER_AUDIO__OUTPUT_DIR": "/var/lib/out",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.username) == ("broker.lan", 8883, "speaker")
    assert s.mqtt.password is not None and s.mqtt.password.get_secret_value() == "hunter2"
    assert (s.site, s.base_topic, s.engine) == ("kitchen", "home/tts", EngineChoice.ESPEAK)
    assert s.cartesia.api_key is not None and s.cartesia.api_key.get_secret_value() == "sk_car_1"
    assert (s.cartesia.url, s.cartesia.model, s.cartesia.voice) == ("ws://127.0.0.1:9", "sonic-3-2026-01-12", "voice-1")
    assert s.cartesia.language == "de"
    assert s.audio.device == 3 and s.audio.output_dir == Path("/var/lib/out")
    assert not s.use_cartesia  # the engine was chosen explicitly


def test_auto_engine_uses_cartesia_when_a_key_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_SPEAKER_CARTESIA__API_KEY", "sk_car_2")
    assert load_settings().use_cartesia


def test_prefixed_key_wins_over_cartesia_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARTESIA_API_KEY", "plain")
    monkeypatch.setenv("MQTT_SPEAKER_CARTESIA__API_KEY", "prefixed")
    key = load_settings().cartesia.api_key
    assert key is not None and key.get_secret_value() == "prefixed"


def test_cartesia_api_key_in_the_environment_wins_over_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[cartesia]\napi_key = "from-the-file"\n')
    assert _key(load_settings(config)) == "from-the-file"
    monkeypatch.setenv("CARTESIA_API_KEY", "from-the-environment")
    assert _key(load_settings(config)) == "from-the-environment"
    monkeypatch.setenv("MQTT_SPEAKER_CARTESIA__API_KEY", "prefixed")
    assert _key(load_settings(config)) == "prefixed"


def _key(settings: Settings) -> str | None:
    key = settings.cartesia.api_key
    return None if key is None else key.get_secret_value()


def test_toml_file_with_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('site = "hall"\n[mqtt]\nhost = "file-host"\nport = 1884\n[audio]\ndevice = "pulse"\n')
    monkeypatch.setenv("MQTT_SPEAKER_MQTT__PORT", "1999")
    s = load_settings(config)
    assert (s.site, s.mqtt.host, s.mqtt.port, s.audio.device) == ("hall", "file-host", 1999, "pulse")


def test_config_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('site = "attic"\n')
    monkeypatch.setenv("MQTT_SPEAKER_CONFIG", str(config))
    assert load_settings().site == "attic"


def test_the_example_config_is_valid_and_documents_every_setting() -> None:
    s = load_settings(EXAMPLE)
    text = EXAMPLE.read_text()

    def names(model: type[object], prefix: str = "") -> list[str]:
        out: list[str] = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                out += names(annotation, f"{name}.")
            else:
                out.append(f"{prefix}{name}")
        return out

    missing = [n for n in names(Settings) if f"{n.split('.')[-1]} =" not in text]
    assert missing == [], f"settings not documented in {EXAMPLE.name}: {missing}"
    assert s.site


@pytest.mark.parametrize("site", ["Kitchen", "a/b", "all", "x+y", ""])
def test_unsafe_sites_are_refused(site: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_SPEAKER_SITE", site)
    with pytest.raises(ConfigError, match="site"):
        load_settings()


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARTESIA_API_KEY", "sk_car_secret")
    monkeypatch.setenv("MQTT_SPEAKER_MQTT__PASSWORD", "pw_secret")
    s = load_settings()
    assert "sk_car_secret" not in repr(s) and "pw_secret" not in repr(s)
    assert sorted(s.secrets()) == ["pw_secret", "sk_car_secret"]


def test_default_site_is_topic_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "My-Pi.Local")
    assert default_site() == "my-pi"


def test_systemd_credentials_fill_unset_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "cartesia_api_key").write_text("sk_car_from_credential\n")
    (credentials / "mqtt_password").write_text("pw_from_credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    s = load_settings()
    assert s.cartesia.api_key is not None and s.cartesia.api_key.get_secret_value() == "sk_car_from_credential"
    assert s.mqtt.password is not None and s.mqtt.password.get_secret_value() == "pw_from_credential"
    monkeypatch.setenv("MQTT_SPEAKER_MQTT__PASSWORD", "explicit")
    password = load_settings().mqtt.password
    assert password is not None and password.get_secret_value() == "explicit"
    # The files script/install leaves empty stand for "not set": the local engine, no password.
    (credentials / "cartesia_api_key").write_text("")
    (credentials / "mqtt_password").write_text("\n")
    monkeypatch.delenv("MQTT_SPEAKER_MQTT__PASSWORD")
    s = load_settings()
    assert (s.cartesia.api_key, s.mqtt.password, s.has_api_key) == (None, None, False)


@pytest.mark.parametrize(
    ("value", "groups"),
    [("downstairs", ["downstairs"]), ("downstairs,bedrooms", ["downstairs", "bedrooms"]), ("a b", ["a", "b"])],
)
def test_a_list_setting_from_the_environment_may_be_plain_words(
    value: str, groups: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTT_SPEAKER_SYNC__GROUPS", value)
    monkeypatch.setenv("MQTT_SPEAKER_FALLBACK", "espeak")
    settings = load_settings()
    assert (settings.sync.groups, settings.fallback) == (groups, ["espeak"])
