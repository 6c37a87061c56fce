"""Which output plays: WAV files, the sound server (libpulse), or PortAudio (bare ALSA)."""

from __future__ import annotations

from mqtt_speaker.playback.ducking import tag_own_stream
from mqtt_speaker.playback.output import Output
from mqtt_speaker.playback.portaudio import SoundDevicePlayer
from mqtt_speaker.playback.pulse import PulsePlayer, available
from mqtt_speaker.playback.wav import WavWriter
from mqtt_speaker.settings import AudioSettings


def sound_player(settings: AudioSettings) -> PulsePlayer | SoundDevicePlayer:
    """The player `audio.backend` asks for: the sound server when it can be used, else PortAudio."""
    named_device = settings.device not in (None, "pulse", "default")
    if settings.backend == "portaudio" or (settings.backend == "auto" and (named_device or not available())):
        return SoundDevicePlayer(settings)
    return PulsePlayer(settings, fallback=(lambda: SoundDevicePlayer(settings)) if settings.backend == "auto" else None)


def build_output(settings: AudioSettings) -> Output:
    """WAV files when `output_dir` is set, else the sound device (its stream tagged with our role)."""
    if settings.output_dir is not None:
        return WavWriter(settings.output_dir, settings.sample_rate, settings.max_buffer_seconds)
    tag_own_stream(settings.role)
    return sound_player(settings)
