"""Unit tests of the playback pieces that need no sound device."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from mqtt_speaker.engines.base import PcmAssembler
from mqtt_speaker.playback import devices
from mqtt_speaker.playback.output import Playback, Played
from mqtt_speaker.playback.pcm import Resampler
from mqtt_speaker.playback.wav import WavWriter
from mqtt_speaker.settings import AudioSettings
from mqtt_speaker.speech.audio import CHIME_SEGMENT, AudioChunk


def test_streaming_resampler_keeps_pitch_and_length_across_chunk_boundaries() -> None:
    source = (np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050) * 16000).astype(np.int16)
    resample = Resampler(22050, 44100)
    out = np.concatenate([*(resample(source[i : i + 777]) for i in range(0, source.size, 777)), resample.flush()])
    assert abs(out.size - 44100) <= 2
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 44100 / out.size - 440) < 1.5
    assert np.abs(np.diff(out.astype(np.float64))).max() < 0.07 * 32768  # no clicks at the joins


def test_resampling_adds_nothing_above_the_sources_nyquist_frequency() -> None:
    """Linear interpolation mirrored a 5 kHz tone from 22.05 kHz to 17 kHz on a 48 kHz device."""
    source = (np.sin(np.arange(22050) * 2 * np.pi * 5000 / 22050) * 16000).astype(np.int16)
    resample = Resampler(22050, 48000)
    out = np.concatenate([*(resample(source[i : i + 441]) for i in range(0, source.size, 441)), resample.flush()])
    power = np.abs(np.fft.rfft(out.astype(np.float64) * np.hanning(out.size))) ** 2
    above = power[np.fft.rfftfreq(out.size, 1 / 48000) > 11025].sum()
    assert above / power.sum() < 1e-5  # below -50 dB


def test_same_rate_passes_through() -> None:
    x = np.ones(10, dtype=np.int16)
    assert Resampler(44100, 44100)(x) is x


def test_pcm_assembler_carries_an_odd_byte() -> None:
    pcm = PcmAssembler()
    assert pcm.feed(b"\x01\x00\x02").tolist() == [1]
    assert pcm.feed(b"\x00").tolist() == [2]


def test_a_wav_file_holds_the_whole_chime_and_speech_at_the_configured_rate(tmp_path: Path) -> None:
    """WAV output goes through the play loop of the sound devices: every part is resampled to the file's
    rate (audio.sample_rate), and a resampler's tail is kept when the rate changes (the end of a 16 kHz
    chime was lost before the 22.05 kHz speech that followed it)."""

    def tone(rate: int, seconds: float, segment: int) -> list[AudioChunk]:
        samples = (np.sin(np.arange(int(rate * seconds)) * 2 * np.pi * 440 / rate) * 16000).astype(np.int16)
        return [AudioChunk(samples[i : i + 1000], rate, segment) for i in range(0, samples.size, 1000)]

    async def chunks() -> AsyncIterator[AudioChunk]:
        for chunk in [*tone(16000, 0.5, CHIME_SEGMENT), *tone(22050, 0.5, 0), *tone(24000, 0.5, 1)]:
            yield chunk

    async def play() -> Played:
        writer = WavWriter(tmp_path, sample_rate=48000)
        return await writer.play(chunks(), Playback("tail", lambda: None, asyncio.Event()))

    played = asyncio.run(play())
    (path,) = tmp_path.glob("*.wav")
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == 48000
        x = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64) / 32768
    assert abs(x.size - 1.5 * 48000) <= 16, x.size
    assert played.seconds == pytest.approx(1.5, abs=0.001)
    for end in (0.5, 1.0, 1.5):  # each part is there to its last few milliseconds: no tail was dropped
        last = x[int((end - 0.004) * 48000) : int((end - 0.001) * 48000)]
        assert np.abs(last).max() > 0.3, (end, np.abs(last).max())


@pytest.mark.parametrize(
    ("device", "player"),
    [
        (None, "PulsePlayer"),
        ("pulse", "PulsePlayer"),
        ("default", "PulsePlayer"),
        ("USB Audio", "SoundDevicePlayer"),
        (3, "SoundDevicePlayer"),
    ],
)
def test_under_auto_a_named_device_selects_portaudio_but_pulse_and_default_are_the_sound_server(
    device: str | int | None, player: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices, "available", lambda: True)  # a sound server answers
    assert type(devices.sound_player(AudioSettings(device=device))).__name__ == player
