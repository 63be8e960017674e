"""A scripted engine and a demo conversation: for ``mmchat app --screenshot`` and for fast UI tests.

:class:`DemoEngine` has the shape of :class:`mmchat.engine.Engine` (``llm``, ``whisper``,
``image_encoder``, ``text_reader``, status callbacks) but no model: its LLM streams a given reply word by word and
honours ``stop`` per token like the real one. Nothing here imports torch.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mmchat.engine import SlotStatus
from mmchat.probe import Probe

DEMO_MODELS = {"llm": "qwen2.5-coder-0.5b-instruct", "asr": "whisper-base", "image": "efficientnet-lite0",
               "ocr": "pp-ocrv6-small", "faces": "haar-frontalface-alt2"}


def _words(text: str) -> list[str]:
    out, word = [], ""
    for ch in text:
        word += ch
        if ch in " \n":
            out.append(word)
            word = ""
    if word:
        out.append(word)
    return out


class DemoLLM:
    """Streams ``reply(messages)`` in words, ``delay_s`` apart, stopping when ``stop`` is set."""

    hidden_size = 896
    dtype = None
    last_stats = None  # nothing measured: no prompt is fitted, so nothing is ever left out

    def __init__(self, reply: Callable[[list[dict]], str] | str = "Hello! How can I help?", *,
                 delay_s: float = 0.0, name: str = "demo-llm") -> None:
        self.reply = reply if callable(reply) else (lambda _messages, text=reply: text)
        self.delay_s = delay_s
        self.name = name
        self.prompts: list[list[dict]] = []  # what each call was asked, for tests
        self.configs: list = []
        self.media: list[list] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())  # words stand in for tokens (memory budgets in the prompt)

    def embed(self, token_ids):
        """Input embeddings of ``token_ids``: a fixed pseudo-random vector per id (what a ``ctc_mlp``
        fusion checkpoint reads its stacks against)."""
        import torch

        return torch.stack([torch.randn(self.hidden_size, generator=torch.Generator().manual_seed(int(i))) * 0.02
                            for i in token_ids.reshape(-1).tolist()]).reshape(*token_ids.shape, self.hidden_size)

    def stream(self, messages, *, config=None, media=(), stop: threading.Event | None = None):
        self.prompts.append(list(messages))
        self.configs.append(config)
        self.media.append(list(media or ()))
        for word in _words(self.reply(messages)):
            if stop is not None and stop.is_set():
                return
            if self.delay_s:
                time.sleep(self.delay_s)  # a worker thread, like real generation
            yield word


@dataclass(frozen=True)
class DemoTranscript:
    text: str
    language: str = "en"
    duration_s: float = 0.0
    speech: bool = True


class DemoWhisper:
    fingerprint = "demo-whisper"

    def __init__(self, text: str = "Can you write Python that draws a picture like this?") -> None:
        self.text = text
        self.calls = 0

    def transcribe(self, audio, *, language: str | None = "en") -> DemoTranscript:
        self.calls += 1
        return DemoTranscript(self.text, duration_s=len(audio) / 16_000, speech=bool(self.text))


class DemoImageEncoder:
    """Recognises nothing (no model): an image turn's evidence is its size and colours."""

    name = DEMO_MODELS["image"]
    backend = "demo"
    trained = True
    fingerprint = "demo-image-encoder"

    def recognise(self, image, *, top_k: int = 5) -> list:
        return []


class DemoTextReader:
    """Reads no text (no model)."""

    name = DEMO_MODELS["ocr"]

    def read(self, image):
        from mmchat.vision.ocr import TextReading

        return TextReading((), 0.0)


class DemoFaceFinder:
    """Finds no face (no model)."""

    name = DEMO_MODELS["faces"]

    def count(self, image) -> int:
        return 0


class DemoEngine:
    """Engine-shaped, with every slot "ready"."""

    def __init__(self, llm: DemoLLM | None = None, whisper: DemoWhisper | None = None,
                 image_encoder: DemoImageEncoder | None = None, text_reader: DemoTextReader | None = None) -> None:
        self._llm = llm or DemoLLM()
        self._whisper = whisper or DemoWhisper()
        self._image = image_encoder or DemoImageEncoder()
        self._reader = text_reader or DemoTextReader()
        self._callbacks = []

    @property
    def llm(self) -> DemoLLM:
        return self._llm

    @property
    def whisper(self) -> DemoWhisper:
        return self._whisper

    @property
    def image_encoder(self) -> DemoImageEncoder:
        return self._image

    @property
    def text_reader(self) -> DemoTextReader:
        return self._reader

    @property
    def face_finder(self) -> DemoFaceFinder:
        return DemoFaceFinder()

    def add_status_callback(self, callback) -> None:
        self._callbacks.append(callback)

    def remove_status_callback(self, callback) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def status(self) -> dict[str, SlotStatus]:
        return {role: SlotStatus(role, DEMO_MODELS[role], "ready", "pretrained" if role == "image" else "")
                for role in DEMO_MODELS}

    def model_name(self, role: str) -> str:
        return DEMO_MODELS[role]

    @property
    def chat_label(self) -> str:
        return DEMO_MODELS["llm"]

    def is_loaded(self, role: str) -> bool:
        return True


DEMO_EMBED_DIM = 64


def demo_embed(texts):
    """Unit bag-of-words vectors (hashed words): an embedder-shaped stand-in for MiniLM, no model."""
    import zlib

    import numpy as np

    vectors = np.zeros((len(texts), DEMO_EMBED_DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.casefold().split():
            vectors[row, zlib.crc32(word.strip(".,!?;:").encode()) % DEMO_EMBED_DIM] += 1.0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def demo_memory(path):
    """The profile database at ``path`` with :func:`demo_embed` instead of MiniLM (fast UI tests, the demo)."""
    from mmchat.memory import MemoryService
    from mmchat.profile import ProfileStore

    return MemoryService(ProfileStore(path), embed=demo_embed)


def demo_services(engine: DemoEngine | None = None, *, microphone: Probe = Probe(True, "demo microphone"),
                  speakers: Probe = Probe(True, "demo speakers"), **overrides):
    """Services for the demo window: the scripted engine, no models to load, no real devices.
    ``overrides`` replace single services (tests pass a recorder on a fake stream, a fake speaker)."""
    from mmchat_ui.services import Services

    engine = engine or DemoEngine()

    def no_device(*_args):
        from mmchat.errors import MMChatError

        raise MMChatError("The demo has no audio devices.")

    services = dict(make_engine=lambda _settings: engine, make_recorder=no_device,
                    microphone=lambda _settings: microphone, make_speaker=no_device, make_output=no_device,
                    audio_output=lambda: speakers, input_devices=lambda: [], fetch_model=no_device,
                    load_models=False, make_memory=demo_memory)
    services.update(overrides)
    return Services(**services)


# -- the demo conversation ---------------------------------------------------------------------------
DEMO_IMAGE_REPLY = (
    "A stylised **sunset over the sea**: an orange sun low on the horizon, purple hills on the left "
    "and calm water reflecting the light.\n\n"
    "- *Colours:* warm orange sky fading into violet\n"
    "- *Shapes:* a circle for the sun, triangles for the hills"
)
DEMO_VOICE_TRANSCRIPT = "Can you write Python that draws a picture like this?"
DEMO_CODE_REPLY = (
    "Sure — a few lines of **Pillow** paint a similar sunset:\n\n"
    "```python\n"
    "from PIL import Image, ImageDraw\n\n"
    "img = Image.new(\"RGB\", (640, 400), (250, 140, 90))\n"
    "draw = ImageDraw.Draw(img)\n"
    "draw.rectangle([0, 250, 640, 400], fill=(70, 60, 120))  # the sea\n"
    "draw.ellipse([260, 150, 380, 270], fill=(255, 196, 92))  # the sun\n"
    "img.save(\"sunset.png\")\n"
    "```\n\n"
    "Run it and open `sunset.png`; change the `fill=` colours to taste."
)
DEMO_HISTORY = (  # (title, hours ago)
    ("Plan a weekend in Lisbon", 3),
    ("Explain Python decorators", 26),
    ("Regex for ISO dates", 30),
    ("Summarise the meeting notes", 24 * 4),
    ("Sourdough starter tips", 24 * 12),
    ("Bash loop over files with spaces", 24 * 40),
)


def sunset_png(width: int = 480, height: int = 300) -> bytes:
    """A small generated picture (no files needed): sky gradient, sun, hills and sea."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = int(height * 0.62)
    for y in range(horizon):
        t = y / horizon
        draw.line([(0, y), (width, y)], fill=(int(255 - 40 * t), int(120 + 60 * t), int(90 + 40 * t)))
    for y in range(horizon, height):
        t = (y - horizon) / (height - horizon)
        draw.line([(0, y), (width, y)], fill=(int(70 - 30 * t), int(60 - 20 * t), int(120 - 30 * t)))
    sun_r = int(height * 0.16)
    cx, cy = int(width * 0.58), horizon - sun_r // 3
    draw.ellipse([cx - sun_r, cy - sun_r, cx + sun_r, cy + sun_r], fill=(255, 196, 92))
    draw.polygon([(0, horizon), (int(width * 0.18), int(horizon * 0.62)), (int(width * 0.4), horizon)],
                 fill=(118, 72, 140))
    draw.polygon([(int(width * 0.2), horizon), (int(width * 0.33), int(horizon * 0.75)), (int(width * 0.5), horizon)],
                 fill=(88, 54, 118))
    for i in range(7):  # the sun's reflection
        y = horizon + 8 + i * 10
        half = int(sun_r * (1 - i / 8))
        draw.line([(cx - half, y), (cx + half, y)], fill=(255, 190, 110), width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def speech_like_flac(seconds: float = 3.4) -> bytes:
    """A clip shaped like speech (syllable bursts of voiced sound), as FLAC, for the demo voice message."""
    import numpy as np
    import soundfile

    rate = 16_000
    t = np.arange(int(seconds * rate)) / rate
    envelope = np.clip(np.sin(2 * math.pi * 2.3 * t) * 0.6 + np.sin(2 * math.pi * 0.7 * t) * 0.4, 0, None)
    voice = np.sin(2 * math.pi * 140 * t) + 0.5 * np.sin(2 * math.pi * 280 * t) + 0.2 * np.sin(2 * math.pi * 560 * t)
    audio = (0.3 * envelope * voice).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format="FLAC")
    return buffer.getvalue()


def fill_demo_store(store) -> int:
    """Write the demo conversations into ``store``; returns the id of the one to show."""
    from mmchat.store import Attachment

    now = time.time()
    for title, hours in DEMO_HISTORY:
        conversation = store.create_conversation(title)
        store.add_message(conversation.id, "user", title)
        store.add_message(conversation.id, "assistant", "…")
        with store.db.transaction() as conn:  # backdate, so the sidebar shows its day groups
            conn.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now - hours * 3600, conversation.id))
    conversation = store.create_conversation("Sunset picture to Python")
    png = sunset_png()
    store.add_message(conversation.id, "user", "What's in this picture?",
                      attachments=[Attachment("image", "image/png", png, name="sunset.png",
                                              meta={"size": [480, 300]})])
    store.add_message(conversation.id, "assistant", DEMO_IMAGE_REPLY,
                      meta={"model": DEMO_MODELS["llm"], "seconds": 3.1})
    store.add_message(conversation.id, "user", DEMO_VOICE_TRANSCRIPT,
                      attachments=[Attachment("audio", "audio/flac", speech_like_flac(), meta={"duration_s": 3.4})],
                      meta={"transcript": DEMO_VOICE_TRANSCRIPT})
    store.add_message(conversation.id, "assistant", DEMO_CODE_REPLY,
                      meta={"model": DEMO_MODELS["llm"], "seconds": 9.8})
    return conversation.id
