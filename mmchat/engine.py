"""The models a chat needs, loaded lazily, once, thread-safely, with observable status.

The CLI loads what a command needs; the app loads everything after its window is shown, from a
worker thread, and shows each slot's state in its status bar via ``on_status``.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmchat import probe, registry
from mmchat.errors import MMChatError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotStatus:
    role: str  # "llm", "asr", "image", "ocr", "faces"
    model: str  # registry name
    state: str  # "idle" | "loading" | "ready" | "error"
    detail: str = ""  # error message, "pretrained"/"untrained" (image encoders), progress text
    progress: float | None = None  # 0..1 while loading, when known


StatusCallback = Callable[[SlotStatus], None]


class _Sweep:
    """One full collection per engine, before its first load (see :meth:`_Slot.get`)."""

    def __init__(self) -> None:
        self._done = False
        self._lock = threading.Lock()

    def before_load(self) -> None:
        with self._lock:
            if not self._done:
                gc.unfreeze()
                gc.collect()  # e.g. the engine this one replaced, with its models
                self._done = True
        gc.freeze()


class _Slot:
    def __init__(self, role: str, model: str, loader: Callable[[str, Callable[[int, int], None]], Any],
                 notify: Callable[[SlotStatus], None], sweep: _Sweep | None = None) -> None:
        self.role, self.model = role, model
        self._loader, self._notify = loader, notify
        self._sweep = sweep or _Sweep()
        self._lock = threading.Lock()
        self._value: Any = None
        self.status = SlotStatus(role, model, "idle")

    def _set(self, state: str, detail: str = "", progress: float | None = None) -> None:
        self.status = SlotStatus(self.role, self.model, state, detail, progress)
        self._notify(self.status)

    def get(self) -> Any:
        """The model, loaded on first use.

        After a load every object is frozen out of the cyclic garbage collector (``gc.freeze``):
        a loaded model leaves ~10^6 long-lived objects for it to walk, and each full collection
        then took 140-230 ms holding the GIL, in whichever thread it hit, so the GUI froze that
        long now and then (seen mid fusion-training). Frozen cyclic garbage is never collected,
        though, and a replaced engine is some (its slots call back into it), models and all: so
        an engine's first load unfreezes and collects (one full pass on this worker thread), then
        freezes what is left before loading, so that the load's own collections walk only new
        objects (37-79 ms instead of 97-195 ms for Qwen 0.5B). Its later loads skip that pass:
        with the LLM loaded it held the GIL for 290-310 ms, a stall of the GUI each time the image
        encoder or the OCR model loaded (nothing of the engine's own can have become garbage)."""
        with self._lock:
            if self._value is not None:
                return self._value
            self._set("loading", progress=0.0)
            started = time.monotonic()

            def progress(done: int, total: int) -> None:
                self._set("loading", "converting (one time)", done / total if total else None)

            self._sweep.before_load()
            try:
                self._value = self._loader(self.model, progress)
            except MMChatError as exc:
                self._set("error", str(exc))
                raise
            except Exception as exc:
                self._set("error", f"{type(exc).__name__}: {exc}")
                raise
            gc.collect()  # the load's own garbage: a pass over the objects it made, not the frozen ones
            gc.freeze()
            trained = getattr(self._value, "trained", None)
            detail = "" if trained is None else ("pretrained" if trained else "untrained")
            self._set("ready", detail)
            log.info("%s %s ready in %.1f s", self.role, self.model, time.monotonic() - started)
            return self._value

    @property
    def loaded(self) -> bool:
        return self._value is not None


RUNTIME_ENV = "MMCHAT_LLM_RUNTIME"  # "llama.cpp" (the default) or "torch"
RUNTIMES = ("llama.cpp", "torch")
THREADS_ENV = "MMCHAT_LLM_THREADS"


def default_threads() -> int:
    """llama.cpp's threads when none are chosen: ``$MMCHAT_LLM_THREADS`` if set, else the physical cores."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return probe.physical_cores()


def llm_runtime(name: str) -> str:
    """The runtime that runs registry LLM ``name`` for chat: llama.cpp for GGUF models, torch for
    Hugging Face ones (downloaded from the hub) or, for a bundled GGUF, when ``$MMCHAT_LLM_RUNTIME``
    says so. A GGUF fetched from the hub runs on llama.cpp only: no torch copy is made of it (the 7B
    would be 15 GB as bf16)."""
    chosen = os.environ.get(RUNTIME_ENV, "").strip() or RUNTIMES[0]
    if chosen not in RUNTIMES:
        raise MMChatError(f"Unknown LLM runtime {chosen!r} in ${RUNTIME_ENV}.",
                          hint="Use one of: " + ", ".join(RUNTIMES))
    spec = registry.get(name)
    if spec.source_format != "gguf":
        return "torch"
    return chosen if spec.bundled else "llama.cpp"


def _llm_loader(threads: int | None):
    def load(name: str, progress):
        if llm_runtime(name) == "llama.cpp":
            from mmchat.llm.llamacpp import LlamaCppLLM

            llm = LlamaCppLLM.load(name, threads=threads or default_threads(), progress=progress)
            llm.adapt_threads = threads is None and not os.environ.get(THREADS_ENV, "").strip()
            return llm
        return _load_torch_llm(name, progress)
    return load


def _server_loader(url: str, model: str | None):
    def load(name: str, progress):
        from mmchat.llm.remote import RemoteLLM

        return RemoteLLM.connect(url, model=model)
    return load


def _load_torch_llm(name: str, progress):
    from mmchat.llm.torch_runtime import LLM

    return LLM.load(name, progress=progress)


def _load_whisper(name: str, progress):
    from mmchat.encoders.whisper import Whisper

    return Whisper.load(name, progress=progress)


def _load_image_encoder(name: str, progress):
    from mmchat.vision import load_image_encoder

    return load_image_encoder(name)


def _load_text_reader(name: str, progress):
    from mmchat.vision.ocr import TextReader

    return TextReader.load(name)


def _load_face_finder(name: str, progress):
    from mmchat.vision.faces import FaceFinder

    return FaceFinder.load(name)


class Engine:
    """Holds one LLM, one speech model, one image encoder, one OCR model and a face detector, each
    loaded on first use.

    With ``server`` (an OpenAI-compatible server's address) chat runs there, on ``server_model``
    (the first the server lists when not given); ``llm`` still names the local model that fusion
    training (:attr:`training_llm`) uses."""

    def __init__(self, *, llm: str | None = None, asr: str | None = None, image: str | None = None,
                 ocr: str | None = None, faces: str | None = None, on_status: StatusCallback | None = None,
                 llm_threads: int | None = None, server: str | None = None, server_model: str | None = None) -> None:
        self._callbacks: list[StatusCallback] = [on_status] if on_status else []
        llm = llm or registry.default(registry.Role.LLM).name
        asr = asr or registry.default(registry.Role.ASR).name
        image = image or registry.default(registry.Role.IMAGE).name
        ocr = ocr or registry.default(registry.Role.OCR).name
        faces = faces or registry.default(registry.Role.FACES).name
        for name, role in ((llm, registry.Role.LLM), (asr, registry.Role.ASR), (image, registry.Role.IMAGE),
                           (ocr, registry.Role.OCR), (faces, registry.Role.FACES)):
            if registry.get(name).role is not role:
                raise MMChatError(f"{name} is not a {role.value} model.")
        sweep = _Sweep()
        self._llm_name = llm
        self.server = self.server_model = None
        if server:
            from mmchat.llm.remote import normalise_url

            self.server, self.server_model = normalise_url(server), server_model or None
            chat = _Slot("llm", self.server, _server_loader(self.server, self.server_model), self._notify, sweep)
        else:
            chat = _Slot("llm", llm, _llm_loader(llm_threads), self._notify, sweep)
        self._slots = {
            "llm": chat,
            "asr": _Slot("asr", asr, _load_whisper, self._notify, sweep),
            "image": _Slot("image", image, _load_image_encoder, self._notify, sweep),
            "ocr": _Slot("ocr", ocr, _load_text_reader, self._notify, sweep),
            "faces": _Slot("faces", faces, _load_face_finder, self._notify, sweep),
        }
        # The chat LLM as torch runs it, for fusion training (gradients): loaded only for that, and
        # not one of the slots the app loads and shows.
        self._trainer = _Slot("llm", llm, _load_torch_llm, self._notify, sweep)
        self._llm_threads = llm_threads

    def with_models(self, **names: str) -> Engine:
        """An engine with other models in the named slots (``image="clip-vit-b-32"``) that shares this
        one's other slots, loaded or not: choosing another image encoder does not load the LLM again."""
        unknown = set(names) - set(self._slots)
        if unknown:
            raise ValueError(f"no slot {', '.join(sorted(unknown))}; slots: {', '.join(self._slots)}")
        chosen = {role: names.get(role, slot.model) for role, slot in self._slots.items()}
        chosen["llm"] = names.get("llm", self._llm_name)
        other = Engine(**chosen, llm_threads=self._llm_threads,
                       server=None if "llm" in names else self.server, server_model=self.server_model)
        other._callbacks = list(self._callbacks)  # the shared slots still report through this engine
        for role, slot in self._slots.items():
            if role not in names:
                other._slots[role] = slot
        if "llm" not in names:
            other._trainer = self._trainer
        return other

    def add_status_callback(self, callback: StatusCallback) -> None:
        self._callbacks.append(callback)

    def remove_status_callback(self, callback: StatusCallback) -> None:
        """Stop calling ``callback`` (its window closed); one that was not added is no error."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def _notify(self, status: SlotStatus) -> None:
        # A copy: a window on the GUI thread may remove its callback while a worker loads a model.
        for callback in list(self._callbacks):
            callback(status)

    @property
    def llm(self):
        """The chat model (:class:`~mmchat.llm.llamacpp.LlamaCppLLM`, or
        :class:`~mmchat.llm.torch_runtime.LLM` where torch runs chat), loaded on first access."""
        return self._slots["llm"].get()

    def open_llm_ahead(self) -> None:
        """Start opening the chat LLM in a background thread, for a caller about to spend a while
        importing (``chat --once``): for llama.cpp, the file's sha256 check and the load run without
        the GIL, beside the imports; the first access to :attr:`llm` then takes what was opened."""
        slot = self._slots["llm"]
        if not slot.loaded and self.server is None and llm_runtime(slot.model) == "llama.cpp":
            from mmchat.llm import gguf

            gguf.open_ahead(slot.model, threads=self._llm_threads or default_threads())

    @property
    def training_llm(self):
        """The LLM as torch runs it (:class:`~mmchat.llm.torch_runtime.LLM`), for training fusion
        through it: the chat model when torch runs chat, else a torch copy loaded on first access."""
        chat = self._slots["llm"]
        if self.server is None and llm_runtime(chat.model) == "torch":
            return chat.get()
        return self._trainer.get()

    @property
    def whisper(self):
        """The speech model (:class:`mmchat.encoders.whisper.Whisper`)."""
        return self._slots["asr"].get()

    @property
    def image_encoder(self):
        """The image encoder (:mod:`mmchat.vision`; ``trained`` is False for CLIP's seeded random init)."""
        return self._slots["image"].get()

    @property
    def text_reader(self):
        """The OCR model (:class:`mmchat.vision.ocr.TextReader`)."""
        return self._slots["ocr"].get()

    @property
    def face_finder(self):
        """The face detector (:class:`mmchat.vision.faces.FaceFinder`)."""
        return self._slots["faces"].get()

    def status(self) -> dict[str, SlotStatus]:
        return {role: slot.status for role, slot in self._slots.items()}

    def model_name(self, role: str) -> str:
        """The registry model in slot ``role`` (for "llm", the local one even when chat runs on a server)."""
        return self._llm_name if role == "llm" else self._slots[role].model

    @property
    def chat_label(self) -> str:
        """Where chat runs, for a window title or a status line."""
        if self.server is None:
            return self._llm_name
        return f"{self.server_model or 'the served model'} at {self.server}"

    def is_loaded(self, role: str) -> bool:
        return self._slots[role].loaded

    def load_all(self) -> None:
        """Load every model (the app calls this from a worker thread). Errors are reported through
        the status of their slot and do not stop the others from loading."""
        for slot in self._slots.values():
            try:
                slot.get()
            except Exception:
                log.exception("loading %s failed", slot.model)
