"""A conversation with the assistant: what the CLI's ``chat`` and the app's chat view both drive.

:meth:`ChatSession.send` takes the user's text, images and voice, writes the user message at once,
streams the reply as :class:`ChatEvent` s and writes the reply when it ends (complete, stopped or
failed). Media reach the LLM through a :class:`MediaEncoder`: each image as evidence in words (what
the image encoder recognises, its colours, the text OCR reads) and, with a matching fusion
checkpoint, token groups in the LLM's embedding space; voice as its transcript (and tokens).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mmchat.context import MEDIA_PLACEHOLDER
from mmchat.engine import Engine
from mmchat.errors import MMChatError
from mmchat.store import Attachment, ConversationStore, Message

if TYPE_CHECKING:
    from mmchat.feedback import FeedbackResult
    from mmchat.media import MediaEncoder, MediaPart
    from mmchat.memory import MemoryService
    from mmchat.profile import Memory

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are mmchat, a helpful assistant that runs entirely on the user's own computer. "
    "Answer clearly and concisely. Describe only what you are given; do not invent details."
)
# User-message meta key: the retrieved data and reminder the model saw with that turn (not shown).
MODEL_CONTEXT = "model_context"
MEDIA_CACHE_ITEMS = 64  # per session: encoded images/clips kept for re-use in later turns


@dataclass(frozen=True)
class ChatEvent:
    kind: str  # "user" | "transcript" | "memory" | "notice" | "token" | "done"
    text: str = ""
    message: Message | None = None  # the stored message for "user" and "done"
    stats: dict = field(default_factory=dict)
    memories: tuple[Memory, ...] = ()  # "memory": candidates from the user's turn (pending or stored)


class ChatSession:
    """One conversation. ``store=None`` makes a temporary chat that never touches the disk
    (``temporary=True`` says the same of a given in-memory store, e.g. one kept across rebuilds).

    With a ``memory`` service the replies use the profile (preferences, confirmed memories, related
    earlier turns), each user turn may propose memories ("memory" events) and :meth:`feedback`
    learns from ratings. A temporary chat reads the profile but proposes no memories."""

    def __init__(self, engine: Engine, store: ConversationStore | None, conversation_id: int | None = None, *,
                 media: MediaEncoder | Callable[[], MediaEncoder] | None = None,
                 system_prompt: str = SYSTEM_PROMPT, generation=None, memory: MemoryService | None = None,
                 temporary: bool | None = None) -> None:
        self.engine = engine
        self.temporary = store is None if temporary is None else temporary
        self.store = store if store is not None else ConversationStore(":memory:")
        if conversation_id is None or self.store.get_conversation(conversation_id) is None:
            conversation_id = self.store.create_conversation().id
        self.conversation_id = conversation_id
        self._media = media
        self.system_prompt = system_prompt
        self.generation = generation
        self.memory = memory
        self._media_cache: OrderedDict[str, MediaPart] = OrderedDict()
        self._notes_shown: set[str] = set()

    @property
    def media(self) -> MediaEncoder:
        """Fusion where a checkpoint matches the loaded models, words otherwise, decided on first use:
        ``media`` may be a factory, so a text-only chat never loads the image encoder."""
        from mmchat.media import MediaEncoder, media_encoder  # torch: imported for the first picture or clip

        if self._media is None:
            self._media = media_encoder(self.engine)
        elif not isinstance(self._media, MediaEncoder):
            self._media = self._media()
        return self._media

    def history(self) -> list[Message]:
        return self.store.messages(self.conversation_id)

    # -- sending ---------------------------------------------------------------------------------
    def send(self, text: str, *, images: Sequence = (), audio: np.ndarray | None = None,
             transcript: str | None = None, stop: threading.Event | None = None,
             remember: bool = False) -> Iterator[ChatEvent]:
        """Send one user turn. Images and audio are validated before anything is written, so bad
        input raises :class:`MMChatError` and leaves the conversation as it was. ``transcript`` is
        the user's reviewed transcript of ``audio`` (the app shows it before sending); without it
        the audio is transcribed here. ``remember`` confirms this turn's (unflagged) memory
        candidates at once, whatever the profile's memory mode."""
        from mmchat.images import load_image, to_png_bytes

        loaded = [img if hasattr(img, "mode") else load_image(img) for img in images]
        attachments = [Attachment("image", "image/png", to_png_bytes(img), meta=_image_meta(img)) for img in loaded]
        meta: dict = {}
        if audio is not None:
            if transcript is None:
                transcript = self.engine.whisper.transcribe(audio).text.strip()
                yield ChatEvent("transcript", transcript)
            transcript = transcript.strip()
            meta["transcript"] = transcript
            text = f"{text.strip()}\n{transcript}".strip() if text.strip() else transcript
            attachments.append(Attachment("audio", "audio/flac", _flac_bytes(audio),
                                          meta={"duration_s": round(len(audio) / 16_000, 2)}))
        if not text.strip() and not attachments:
            raise MMChatError("Nothing to send: the message is empty (and no speech was heard).")
        user = self.store.add_message(self.conversation_id, "user", text, attachments=attachments, meta=meta)
        yield ChatEvent("user", text, message=user)
        yield from self._propose(user, remember=remember)
        yield from self._reply(stop=stop)

    def _propose(self, user: Message, *, remember: bool) -> Iterator[ChatEvent]:
        """Memory candidates of a user turn (none in a temporary chat)."""
        if self.memory is not None and not self.temporary:
            found = self.memory.propose(user.content, source_message_id=user.id, confirm=remember)
            if found:
                yield ChatEvent("memory", "\n".join(m.text for m in found), message=user, memories=tuple(found))

    # -- personalisation -------------------------------------------------------------------------
    def feedback(self, message_id: int, rating: int, correction: str | None = None) -> FeedbackResult:
        """👍 (+1) / 👎 (-1) / 0 and an optional correction on one of this chat's replies."""
        from mmchat.feedback import learn

        if self.memory is None:
            raise MMChatError("Feedback needs a profile (this chat has none).")
        return learn(self.memory, self.store, message_id=message_id, rating=rating, correction=correction)

    def why(self, message_id: int) -> list[Memory]:
        """The memories the reply ``message_id`` used."""
        message = self.store.message(message_id)
        if message is None or self.memory is None:
            return []
        return self.memory.why(message)

    def regenerate(self, *, stop: threading.Event | None = None) -> Iterator[ChatEvent]:
        """Replace the last reply with a new one."""
        history = self.history()
        if history and history[-1].role == "assistant":
            self.store.truncate_from(self.conversation_id, history[-1].id)
        if not self.history() or self.history()[-1].role != "user":
            raise MMChatError("There is no message to answer.")
        yield from self._reply(stop=stop)

    def edit_and_resend(self, message_id: int, text: str, *, stop: threading.Event | None = None) -> Iterator[ChatEvent]:
        """Replace a user message (keeping its attachments) and everything after it, then reply."""
        original = next((m for m in self.history() if m.id == message_id and m.role == "user"), None)
        if original is None:
            raise MMChatError("That message cannot be edited (it is not one of your messages here).")
        self.store.truncate_from(self.conversation_id, message_id)
        user = self.store.add_message(self.conversation_id, "user", text,
                                      attachments=original.attachments, meta=original.meta)
        yield ChatEvent("user", text, message=user)
        yield from self._propose(user, remember=False)
        yield from self._reply(stop=stop)

    # -- the reply -------------------------------------------------------------------------------
    def _reply(self, *, stop: threading.Event | None) -> Iterator[ChatEvent]:
        from mmchat.llm import GenerationConfig

        llm = self.engine.llm
        history = self.history()
        config = self.generation or GenerationConfig()
        personal = self._personal(history, llm)
        if personal is not None:
            last = next((i for i in range(len(history) - 1, -1, -1) if history[i].role == "user"), None)
            if last is not None:  # the turn keeps what the model saw with it (stable KV prefix)
                extra = {MODEL_CONTEXT: {"before": personal.context, "after": personal.reminder}}
                self.store.update_meta(history[last].id, extra)
                history = [*history[:last], dataclasses.replace(history[last], meta={**history[last].meta, **extra}),
                           *history[last + 1:]]
            if personal.max_new_tokens is not None and personal.max_new_tokens < config.max_new_tokens:
                config = dataclasses.replace(config, max_new_tokens=personal.max_new_tokens)
        messages, media, notes = self._prompt(history)
        if personal is not None:
            messages[0] = {"role": "system", "content": personal.system}
        for note in notes:
            yield ChatEvent("notice", note)
        chunks: list[str] = []
        started = time.monotonic()
        first_token_s = None
        status = "complete"
        try:
            for chunk in llm.stream(messages, config=config, media=media, stop=stop):
                if first_token_s is None:
                    first_token_s = time.monotonic() - started
                chunks.append(chunk)
                yield ChatEvent("token", chunk)
            if llm.last_stats is not None and (dropped := llm.last_stats.dropped_messages):
                yield ChatEvent("notice", f"This conversation is longer than {llm.name} can read at once: its "
                                          f"{dropped} oldest message{'s were' if dropped > 1 else ' was'} left out "
                                          "of this reply (they are still here).")
        except GeneratorExit:  # the consumer stopped reading: keep what was said so far
            status = "stopped"
            raise
        except BaseException:
            status = "error"
            raise
        finally:
            if stop is not None and stop.is_set() and status == "complete":
                status = "stopped"
            reply = "".join(chunks)
            stats = {"model": llm.name, "seconds": round(time.monotonic() - started, 3),
                     "first_token_s": None if first_token_s is None else round(first_token_s, 3)}
            if personal is not None:
                stats.update(memories=personal.memory_ids, turns=personal.turn_ids)
            stored = None
            if reply or status == "complete":
                stored = self.store.add_message(self.conversation_id, "assistant", reply, status=status, meta=stats)
        yield ChatEvent("done", reply, message=stored, stats=stats)

    def _personal(self, history: Sequence[Message], llm):
        """The profile's system prompt for a reply to the latest user message (None without a profile)."""
        if self.memory is None:
            return None
        query = next((m.content for m in reversed(history) if m.role == "user"), "")
        return self.memory.build_prompt(self.system_prompt, query=query,
                                        store=None if self.temporary else self.store,
                                        conversation_id=self.conversation_id, count_tokens=llm.count_tokens,
                                        mark_used=not self.temporary,
                                        first_turn=not any(m.role == "assistant" for m in history))

    def _prompt(self, history: Sequence[Message]) -> tuple[list[dict], list, list[str]]:
        """Chat-template messages, the media tensors in placeholder order, and notes to show."""
        messages = [{"role": "system", "content": self.system_prompt}]
        tensors: list = []
        notes: list[str] = []
        image_index = 0
        for message in history:
            parts, afters = [], []
            for attachment in message.attachments:
                if attachment.kind == "image":
                    image_index += 1
                    part = self._media_part(attachment, index=image_index)
                else:
                    part = self._media_part(attachment, transcript=message.meta.get("transcript", ""))
                if part.note and part.note not in self._notes_shown:
                    self._notes_shown.add(part.note)
                    notes.append(part.note)
                if part.text:
                    parts.append(part.text)
                if part.after and part.after not in afters:
                    afters.append(part.after)
                tensors.extend(part.tensors)
            # A placeholder typed by the user is text, not a media slot.
            text = message.content.replace(MEDIA_PLACEHOLDER, MEDIA_PLACEHOLDER.replace("|>", " |>"))
            extra = (message.meta.get(MODEL_CONTEXT) or {}) if message.role == "user" else {}
            content = "\n".join([*parts, text]) if parts else text
            if afters:
                content = f"{content}\n\n{' '.join(afters)}"
            content = "\n\n".join(p for p in (extra.get("before", ""), content, extra.get("after", "")) if p)
            messages.append({"role": message.role, "content": content})
        return messages, tensors, notes

    def _media_part(self, attachment: Attachment, *, index: int = 0, transcript: str = "") -> MediaPart:
        key = f"{attachment.sha256}:{index}"
        if key in self._media_cache:
            self._media_cache.move_to_end(key)
            return self._media_cache[key]
        if attachment.kind == "image":
            from mmchat.images import load_image

            part = self.media.image(load_image(attachment.data), index=index)
        else:
            part = self.media.audio(_audio_from_flac(attachment.data), transcript=transcript)
        self._media_cache[key] = part
        while len(self._media_cache) > MEDIA_CACHE_ITEMS:
            self._media_cache.popitem(last=False)
        return part


def _image_meta(image) -> dict:
    """The stored size, and the original's when a huge JPEG was decoded at a reduced scale."""
    meta = {"size": list(image.size)}
    if "scaled_from" in image.info:
        meta["scaled_from"] = list(image.info["scaled_from"])
    return meta


def _flac_bytes(audio: np.ndarray) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(audio, dtype=np.float32), 16_000, format="FLAC")
    return buffer.getvalue()


def _audio_from_flac(data: bytes) -> np.ndarray:
    """A stored voice clip (written by :func:`_flac_bytes`) as 16 kHz mono float32.

    ``mmchat.audio.load_audio`` takes a path (it checks the file's size first), so stored bytes are
    decoded here."""
    import soundfile

    from mmchat.audio import to_mono_16k

    samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return to_mono_16k(samples, sample_rate)
