"""What the window needs from the outside world, as replaceable callables.

The app uses :func:`default_services` (real engine, microphone, piper voice, speakers); tests and
the ``--screenshot`` demo pass fakes. Every default imports its engine module lazily, so building
the window imports no model code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmchat.probe import Probe
from mmchat.settings import Settings
from mmchat_ui.training import train_fusion_default


def memory_service(path: Path | str):
    """The profile database at ``path`` with the bundled MiniLM embedder (loaded on first use)."""
    from mmchat.memory import MemoryService
    from mmchat.profile import ProfileStore

    return MemoryService(ProfileStore(path))


@dataclass
class Services:
    make_engine: Callable[[Settings], object]  # -> mmchat.engine.Engine-like
    make_recorder: Callable[[Settings], object]  # -> mmchat.recorder.Recorder-like (not started)
    microphone: Callable[[Settings], Probe]  # run in a worker at start and after settings change
    make_speaker: Callable[[], object]  # -> mmchat.tts.Speaker-like (worker thread)
    make_output: Callable[[int], object]  # sample rate -> mmchat.playback.AudioOutput-like
    audio_output: Callable[[], Probe]
    input_devices: Callable[[], list[str]]  # microphone names for the settings dialog
    fetch_model: Callable[[str, Callable[[int, int], None]], Path]  # name, progress -> folder
    load_models: bool = True  # load every model after the window shows
    train_fusion: Callable = train_fusion_default  # (engine, progress(phase, done, total), stop) -> report
    make_memory: Callable[[Path | str], object] = memory_service  # profile db path -> MemoryService (worker)


def _engine(settings: Settings):
    from mmchat.engine import Engine

    return Engine(llm=settings.llm or None, asr=settings.asr or None, image=settings.image_encoder or None,
                  llm_threads=settings.llm_threads or None, server=settings.server_url.strip() or None,
                  server_model=settings.server_model.strip() or None)


def _recorder(settings: Settings):
    from mmchat.recorder import Recorder

    return Recorder(device=settings.input_device, max_seconds=settings.max_recording_s)


def microphone_probe(settings: Settings) -> Probe:
    from mmchat import probe

    found = probe.microphone()
    if not found.ok or not settings.input_device:
        return found
    names = _input_devices()
    if not any(settings.input_device in name for name in names):
        return Probe(False, f"the microphone “{settings.input_device}” is not connected "
                            "(pick another one in Settings → Voice)")
    return found


def _input_devices() -> list[str]:
    from mmchat.errors import MMChatError
    from mmchat.recorder import input_devices

    try:
        return [d.name for d in input_devices()]
    except MMChatError:
        return []


def _speaker():
    from mmchat.tts import Speaker

    return Speaker.load()


def _output(sample_rate: int):
    from mmchat.playback import AudioOutput

    return AudioOutput(sample_rate=sample_rate)


def _audio_output() -> Probe:
    from mmchat.playback import available

    ok, reason = available()
    return Probe(ok, reason)


def _fetch(name: str, progress: Callable[[int, int], None]) -> Path:
    from mmchat.download import fetch_model

    return fetch_model(name, progress=progress)


def default_services() -> Services:
    return Services(make_engine=_engine, make_recorder=_recorder, microphone=microphone_probe,
                    make_speaker=_speaker, make_output=_output, audio_output=_audio_output,
                    input_devices=_input_devices, fetch_model=_fetch)
