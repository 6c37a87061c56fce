"""The one settings model: a TOML file, overridden by MQTT_SPEAKER_* environment variables."""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import tomllib
import typing
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from mqtt_speaker.speech.emotions import EMOTIONS
from mqtt_speaker.speech.vocabulary import EngineChoice, EngineName

DEFAULT_CONFIG_PATH = Path("/etc/mqtt-speaker/config.toml")
DEFAULT_VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
TOPIC_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


class ConfigError(Exception):
    """The configuration file or the environment holds something that cannot be used."""


def topic_levels(value: str) -> str:
    """A topic prefix: levels of letters, digits, '_' or '-', separated by '/' (no wildcards)."""
    if not TOPIC_SEGMENT.fullmatch(value):
        raise ValueError("must be topic levels of letters, digits, '_' or '-', separated by '/'")
    return value


TopicPrefix = Annotated[str, AfterValidator(topic_levels)]


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (systemd's StateDirectory=), else $XDG_STATE_HOME/mqtt-speaker."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "mqtt-speaker"


def parse_quiet_hours(value: str) -> tuple[dt.time, dt.time]:
    try:
        start, end = (dt.time.fromisoformat(part.strip()) for part in value.split("-"))
    except ValueError as exc:
        raise ValueError("must be a span such as 22:00-07:00") from exc
    return start, end


def default_site() -> str:
    """The host name, lower-cased, reduced to [a-z0-9_-]."""
    site = re.sub(r"[^a-z0-9_-]", "", socket.gethostname().split(".")[0].lower())
    return site or "speaker"


class MqttSettings(BaseModel):
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = Field(
        default=None, description="MQTT client id; default mqtt-speaker-<site> (fixed, for the persistent session)"
    )
    keepalive: int = Field(default=30, ge=5, le=3600)
    session_expiry: int = Field(
        default=3600,
        ge=0,
        description="Seconds the broker keeps our session (and queued QoS 1 say requests) while we are away; "
        "0 starts a clean session every time",
    )
    reconnect_min_delay: int = Field(default=1, ge=1)
    reconnect_max_delay: int = Field(default=30, ge=1)
    tls: bool = Field(default=False, description="Connect with TLS (port 8883 by convention)")
    ca_certs: Path | None = Field(default=None, description="CA bundle to verify the broker; default: the system's")
    certfile: Path | None = Field(default=None, description="Client certificate, for brokers that ask for one")
    keyfile: Path | None = None
    tls_insecure: bool = Field(default=False, description="Skip the broker host name check (not recommended)")


class CartesiaSettings(BaseModel):
    api_key: SecretStr | None = None
    url: str = Field(default="wss://api.cartesia.ai", description="WebSocket base URL; /tts/websocket is appended")
    model: str = "sonic-3"
    voice: str = DEFAULT_VOICE
    language: str = "en"
    first_chunk_timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for a context's first audio")
    chunk_timeout: float = Field(default=5.0, gt=0, description="Seconds to wait between two audio chunks")
    connect_timeout: float = Field(default=5.0, gt=0)
    idle_reconnect: float = Field(
        default=270.0,
        gt=0,
        description="Open a fresh socket before speaking when the current one has been idle this long "
        "(the service closes idle sockets after 300 s)",
    )
    prefetch_segments: int = Field(
        default=2, ge=1, le=8, description="Contexts in flight at once for a multi-segment request"
    )

    @field_validator("url")
    @classmethod
    def _websocket_url(cls, value: str) -> str:
        """ws:// or wss://, a host, and a port that exists (websockets would raise deep inside a connect)."""
        parts = urllib.parse.urlsplit(value)
        try:
            parts.port  # noqa: B018 (raises ValueError when out of range or not a number)
        except ValueError as exc:
            raise ValueError(f"{value!r} has an invalid port ({exc})") from exc
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"{value!r} is not a ws:// or wss:// URL with a host")
        return value


class EspeakSettings(BaseModel):
    executable: str = "espeak-ng"
    voice: str | None = Field(default=None, description="espeak-ng voice; default: the request's language")
    words_per_minute: int = Field(default=175, ge=80, le=450)


class HomeAssistantSettings(BaseModel):
    discovery: bool = Field(default=True, description="Publish MQTT discovery; false removes it")
    prefix: TopicPrefix = Field(
        default="homeassistant", description="Discovery prefix (and birth topic <prefix>/status)"
    )
    per_entity: bool = Field(
        default=False, description="One discovery topic per entity, for Home Assistant before 2024.11"
    )
    name: str | None = Field(default=None, description="Device name; default: '<Site> speaker'")


class PiperSettings(BaseModel):
    model: Path | None = Field(default=None, description="Piper voice model (.onnx); its .onnx.json beside it")
    config: Path | None = Field(default=None, description="The voice's .onnx.json, if not beside the model")

    @property
    def installed(self) -> bool:
        """A voice is configured and the piper-tts package (the [piper] extra) is installed."""
        import importlib.util

        return self.model is not None and self.model.is_file() and importlib.util.find_spec("piper") is not None


class StreamSettings(BaseModel):
    """[stream]: say/stream, text that arrives chunk by chunk (docs/streaming.md)."""

    timeout: float = Field(default=10.0, gt=0, description="Seconds without a chunk after which a stream ends")
    max_open: int = Field(default=4, ge=1, le=100, description="Streams open at once")
    max_length: int = Field(default=20_000, ge=1, le=1_000_000, description="Characters in one stream")
    gap_wait: float = Field(default=1.0, ge=0, description="Seconds a missing seq is waited for, then skipped")
    max_seq_ahead: int = Field(default=1000, ge=1, description="How far past the next expected seq is accepted")


class CacheSettings(BaseModel):
    enabled: bool = True
    dir: Path = Field(default_factory=lambda: default_state_dir() / "cache", description="Where audio is kept")
    max_mb: float = Field(default=100.0, gt=0, description="Size limit; least recently used entries go first")


class AudioSettings(BaseModel):
    backend: Literal["auto", "pulse", "portaudio"] = Field(
        default="auto",
        description="How audio is played: 'pulse' through the sound server's client library (PulseAudio or "
        "PipeWire; cheapest on CPU), 'portaudio' through PortAudio (bare ALSA), 'auto' the sound server when "
        "one answers and no PortAudio device is named, else PortAudio",
    )
    sink: str | None = Field(default=None, description="Sound server sink to play on; default: the server's default")
    buffer: float = Field(
        default=0.4,
        ge=0.05,
        le=2.0,
        description="Sound server only: seconds queued at the server while speaking (a larger one wakes up less "
        "often and rides out longer stalls; a stop flushes it, so it does not delay stops)",
    )
    prebuffer: float = Field(
        default=0.01,
        ge=0.001,
        le=0.2,
        description="Sound server only: seconds that must be queued before speech starts (a larger one starts "
        "later and survives a slower first second)",
    )
    device: str | int | None = Field(
        default=None,
        description="PortAudio output device name or index; naming one selects PortAudio under 'auto', but "
        "'pulse' and 'default' are the sound server's default sink (played through the server when one answers)",
    )
    output_dir: Path | None = Field(default=None, description="Write WAV files here instead of playing")
    sample_rate: int | None = Field(default=None, description="Output sample rate; default: the device's default rate")
    latency: float | str = Field(
        default="low",
        description="PortAudio only: output latency: 'low', 'high' or seconds (a larger one wakes up less often, "
        "and starts and stops that much later)",
    )
    idle_close: float = Field(
        default=1.0,
        ge=0,
        description="Seconds of silence after which the output stream is closed (an open one costs CPU)",
    )
    max_buffer_seconds: float = Field(default=30.0, gt=1, description="Audio buffered ahead of playback, at most")
    fade_ms: float = Field(default=30.0, ge=0, le=500, description="Fade-out when speech is interrupted")
    duck_db: float = Field(
        default=12.0,
        ge=0,
        le=40,
        description="How far other audio on our sink is lowered while speaking, in dB; 0 turns ducking off. "
        "12 dB (a quarter of the amplitude) keeps the music plainly there and puts a voice of the same "
        "loudness well clear of it",
    )
    role: str = Field(
        default="announcement",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="media.role of our own playback stream, for a sound server's role policy",
    )

    @field_validator("device", mode="before")
    @classmethod
    def _device_index(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value or None

    @field_validator("latency", mode="before")
    @classmethod
    def _latency_seconds(cls, value: Any) -> Any:
        """Seconds given as text (an environment variable) are a number, not a PortAudio keyword."""
        if isinstance(value, str) and value.strip() not in ("low", "high"):
            try:
                return float(value)
            except ValueError:
                raise ValueError("latency: 'low', 'high' or seconds") from None
        return value


def topic_name(value: str) -> str:
    """A site or group name: one topic level, not one of the levels the layout reserves."""
    if not re.fullmatch(r"[a-z0-9_-]+", value) or value in ("all", "group"):
        raise ValueError("must be lower-case letters, digits, '_' or '-' (and not 'all' or 'group')")
    return value


class SyncSettings(BaseModel):
    """Synchronized starts (docs/sync.md)."""

    lead: float = Field(
        default=0.5,
        ge=0.0,
        le=10.0,
        description="Seconds from a broadcast's arrival to its shared start: time for every speaker's "
        "synthesis to be ready (Cartesia's first audio, or a local engine's), so that they start together",
    )
    max_ahead: float = Field(
        default=60.0, gt=0, le=3600.0, description="An 'at' further ahead than this is refused (invalid_request)"
    )
    groups: list[Annotated[str, AfterValidator(topic_name)]] = Field(
        default_factory=list, description="Speaker groups this speaker belongs to: <base>/group/<name>/say"
    )
    share: bool = Field(
        default=True,
        description="A broadcast (all, a group, and their streams) is synthesized once, by one room, and every "
        "room plays that same audio (docs/sync.md); false: this room synthesizes its own copy",
    )


class _Environment(EnvSettingsSource):
    """MQTT_SPEAKER_* variables; a list setting also takes plain words (`MQTT_SPEAKER_FALLBACK=espeak`,
    `MQTT_SPEAKER_SYNC__GROUPS=downstairs,bedrooms`) as well as JSON (`'["downstairs"]'`)."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            # (`field` is None for a nested setting's dict value: pydantic-settings passes it so)
            if typing.get_origin(getattr(field, "annotation", None)) is not list or not isinstance(value, str):
                raise
            return [word for word in re.split(r"[\s,]+", value) if word]


class _CartesiaKey(PydanticBaseSettingsSource):
    """CARTESIA_API_KEY, Cartesia's own variable: below MQTT_SPEAKER_CARTESIA__API_KEY, above the file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ says it all

    def __call__(self) -> dict[str, Any]:
        key = os.environ.get("CARTESIA_API_KEY")
        return {"cartesia": {"api_key": key}} if key else {}


class Settings(BaseSettings):
    """Every setting of mqtt-speaker. See config/config.example.toml for the documented file."""

    model_config = SettingsConfigDict(
        env_prefix="MQTT_SPEAKER_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    site: str = Field(default_factory=default_site)
    base_topic: TopicPrefix = "mqtt-speaker"
    engine: EngineChoice = EngineChoice.AUTO
    default_emotion: str = "neutral"
    max_text_length: int = Field(default=2000, ge=1, le=100_000)
    queue_size: int = Field(default=50, ge=1, le=10_000)
    default_volume: int = Field(default=100, ge=0, le=100, description="Playback volume, percent of full scale")
    default_ttl: float = Field(default=300.0, gt=0, description="Seconds a request may wait to start playing")
    dedupe_window: float = Field(default=300.0, ge=0, description="Seconds a request id is remembered")
    quiet_hours: str | None = Field(default=None, description="Local time span, e.g. 22:00-07:00")
    sounds_dir: Path | None = Field(default=None, description="Folder of <name>.wav chimes")
    max_errors_per_second: int = Field(default=20, ge=1, description="More are summed up in one summary error")
    chars_per_minute: int | None = Field(default=None, ge=1, description="Cost guard: Cartesia characters a minute")
    chars_per_hour: int | None = Field(default=None, ge=1, description="Cost guard: Cartesia characters an hour")
    critical_bypasses_cost_guard: bool = True
    state_file: Path = Field(default_factory=lambda: default_state_dir() / "state.json")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"] = "INFO"
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    cartesia: CartesiaSettings = Field(default_factory=CartesiaSettings)
    espeak: EspeakSettings = Field(default_factory=EspeakSettings)
    piper: PiperSettings = Field(default_factory=PiperSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    fallback: list[EngineName] = Field(
        default_factory=lambda: list[EngineName](["piper", "espeak"]),
        description="Engines tried in order when the primary fails; those not installed are skipped",
    )
    audio: AudioSettings = Field(default_factory=AudioSettings)
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    voices: dict[str, str] = Field(
        default_factory=dict, description="Friendly voice names for Cartesia voice ids, e.g. {Narrator = '6ccb...'}"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: tuple[PydanticBaseSettingsSource, ...] = (
            init_settings,
            _Environment(settings_cls),
            _CartesiaKey(settings_cls),
        )
        if toml_file:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=toml_file),)
        return sources

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_elsewhere(cls, data: Any) -> Any:
        """Secrets not set otherwise (the environment, CARTESIA_API_KEY, the file) come from systemd
        credentials ($CREDENTIALS_DIRECTORY/cartesia_api_key and .../mqtt_password, see LoadCredential=)."""
        if not isinstance(data, dict):
            return data
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        sources: dict[tuple[str, str], list[str | None]] = {
            ("cartesia", "api_key"): [_credential(credentials, "cartesia_api_key")],
            ("mqtt", "password"): [_credential(credentials, "mqtt_password")],
        }
        for (section, key), candidates in sources.items():
            value = next((c for c in candidates if c), None)
            part = data.get(section)
            if value is None or (isinstance(part, dict) and part.get(key)):
                continue
            data[section] = {**(part if isinstance(part, dict) else {}), key: value}
        return data

    @field_validator("site")
    @classmethod
    def _site_is_topic_safe(cls, value: str) -> str:
        return topic_name(value)

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours_span(cls, value: str | None) -> str | None:
        if value:
            parse_quiet_hours(value)
        return value or None

    def in_quiet_hours(self, now: dt.time) -> bool:
        if not self.quiet_hours:
            return False
        start, end = parse_quiet_hours(self.quiet_hours)
        return start <= now < end if start <= end else now >= start or now < end

    @field_validator("default_emotion")
    @classmethod
    def _known_emotion(cls, value: str) -> str:
        if value.lower() not in EMOTIONS:
            raise ValueError(f"unknown emotion {value!r}")
        return value.lower()

    @property
    def has_api_key(self) -> bool:
        return self.cartesia.api_key is not None and bool(self.cartesia.api_key.get_secret_value())

    @property
    def primary_engine(self) -> str:
        """auto: Cartesia with an API key, else Piper when a voice is installed, else espeak-ng."""
        if self.engine is not EngineChoice.AUTO:
            return self.engine.value
        if self.has_api_key:
            return EngineChoice.CARTESIA.value
        return (EngineChoice.PIPER if self.piper.installed else EngineChoice.ESPEAK).value

    @property
    def use_cartesia(self) -> bool:
        return self.primary_engine == EngineChoice.CARTESIA

    def secrets(self) -> list[str]:
        """Values that must never appear in a log line or a published message."""
        values = [self.cartesia.api_key, self.mqtt.password]
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]

    @property
    def device_name(self) -> str:
        return self.homeassistant.name or f"{self.site.replace('_', ' ').replace('-', ' ').title()} speaker"

    @property
    def voice_aliases(self) -> dict[str, str]:
        """The configured aliases, plus "Default" for the configured voice when it has no alias."""
        default = {} if self.cartesia.voice in self.voices.values() else {"Default": self.cartesia.voice}
        return {**default, **self.voices}

    def voice_id(self, voice: str) -> str:
        """A voice alias resolved to its Cartesia id (anything else is taken as an id)."""
        return self.voice_aliases.get(voice, voice)

    def voice_name(self, voice: str) -> str:
        """How a voice is shown: its alias where it has one."""
        aliases = self.voice_aliases
        if voice in aliases:
            return voice
        return next((name for name, vid in aliases.items() if vid == voice), voice)

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"mqtt-speaker-{self.site}"


def _credential(directory: str | None, name: str) -> str | None:
    if not directory:
        return None
    try:
        return (Path(directory) / name).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def config_path_from(cli_path: Path | None) -> Path | None:
    """--config wins, then MQTT_SPEAKER_CONFIG, then /etc/mqtt-speaker/config.toml when it exists."""
    if cli_path is not None:
        return cli_path
    env = os.environ.get("MQTT_SPEAKER_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_settings(cli_path: Path | None = None) -> Settings:
    """Read the settings; raise ConfigError with a message naming the file and the field."""
    path = config_path_from(cli_path)
    if path is None:
        cls: type[Settings] = Settings
    else:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from exc

        class _FromFile(Settings):
            model_config = SettingsConfigDict(toml_file=path)

        cls = _FromFile
    try:
        return cls()
    except SettingsError as exc:  # a variable that cannot be read at all (a dict setting that is not JSON)
        reason = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"invalid settings (environment): {exc}{reason}") from exc
    except ValidationError as exc:
        where = f"config file {path} / environment" if path else "environment"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_input=False)
        )
        raise ConfigError(f"invalid settings ({where}): {problems}") from exc
