"""Runs chat turns off the GUI thread and reports their events back as queued signals.

One :class:`ChatRef` per conversation the window has shown (or a new / temporary chat), holding
its :class:`mmchat.chat.ChatSession` once one was needed. Sessions are built in the worker, because
``mmchat.chat`` imports torch and that must not happen on the GUI thread. One turn runs at a time
(there is one LLM); :meth:`ChatController.stop` sets the event the generator checks per token.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Signal

from mmchat_ui.workers import QUEUED, Task, TaskRunner

log = logging.getLogger(__name__)

_new_ids = itertools.count(1)
USER_MESSAGE_YIELD_S = 0.05  # s the worker pauses after storing the user's message


@dataclass(eq=False)
class ChatRef:
    """A conversation as the window knows it; ``conversation_id`` is None until its first message
    is stored (a new chat) and stays None for a temporary chat."""

    conversation_id: int | None = None
    temporary: bool = False
    session: object | None = None  # ChatSession, touched only by the worker running a turn
    signature: tuple = ()  # what the session was built with (engine, fusion settings)
    serial: int = field(default_factory=lambda: next(_new_ids))


@dataclass(eq=False)
class Job:
    ref: ChatRef
    kind: str  # "send" | "regenerate" | "edit"
    draft: object | None = None  # composer Draft for "send" (restored if nothing was stored)
    edit_id: int | None = None
    user_stored: bool = False
    task: Task | None = None


class ChatController(QObject):
    event = Signal(object, object)  # Job, ChatEvent
    failed = Signal(object, str)  # Job, message (expected trouble, or a bug's short description)
    finished = Signal(object)  # Job
    busy_changed = Signal(bool)

    def __init__(self, runner: TaskRunner, *, engine: Callable[[], object], store: Callable[[], object],
                 settings: Callable[[], object], memory: Callable[[], object] = lambda: None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self._engine = engine
        self._store = store
        self._settings = settings
        self._memory = memory  # -> MemoryService or None (not loaded yet)
        self.current = ChatRef()
        self._refs: dict[int, ChatRef] = {}
        self.job: Job | None = None

    # -- which conversation ----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.job is not None

    def open(self, conversation_id: int) -> ChatRef:
        self.current = self._refs.setdefault(conversation_id, ChatRef(conversation_id))
        return self.current

    def new_chat(self, *, temporary: bool = False) -> ChatRef:
        self.current = ChatRef(temporary=temporary)
        return self.current

    def forget(self, conversation_id: int) -> None:
        """The conversation was deleted (or the store replaced): drop its session."""
        self._refs.pop(conversation_id, None)

    def rebuild_sessions(self) -> None:
        """Rebuild every session before its next turn (a new fusion checkpoint was trained)."""
        for ref in [*self._refs.values(), self.current]:
            ref.signature = ()

    def forget_all(self) -> None:
        self._refs.clear()
        if not self.current.temporary:
            self.current = ChatRef()

    # -- turns -----------------------------------------------------------------------------------
    def send(self, draft) -> Job | None:
        images = [p.image for p in draft.images]
        if draft.audio is not None and draft.transcript is not None:
            text, transcript = "", draft.text  # the box holds the transcript as the user reviewed it
        else:
            text, transcript = draft.text, None  # a clip sent at once is transcribed by the session
        return self._run(Job(self.current, "send", draft=draft), lambda session, stop: session.send(
            text, images=images, audio=draft.audio, transcript=transcript, stop=stop))

    def regenerate(self) -> Job | None:
        return self._run(Job(self.current, "regenerate"), lambda session, stop: session.regenerate(stop=stop))

    def edit(self, message_id: int, text: str) -> Job | None:
        return self._run(Job(self.current, "edit", edit_id=message_id),
                         lambda session, stop: session.edit_and_resend(message_id, text, stop=stop))

    def stop(self) -> None:
        if self.job is not None and self.job.task is not None:
            self.job.task.stop.set()

    def _run(self, job: Job, turn: Callable[[object, object], Iterator]) -> Job | None:
        if self.job is not None:
            return None
        engine, store, settings, memory = self._engine(), self._store(), self._settings(), self._memory()
        ref = job.ref

        def work(emit, stop):
            session = _session_for(ref, engine=engine, store=store, settings=settings, memory=memory)
            for event in turn(session, stop):
                emit(event)
                if event.kind == "user":
                    # Building the prompt next is pure Python, and so is drawing the user's message:
                    # step aside (this is a worker thread) so the window gets the GIL first.
                    time.sleep(USER_MESSAGE_YIELD_S)

        job.task = Task(f"chat-{job.kind}", work)
        job.task.signals.crashed.connect(lambda _tb: self.failed.emit(
            job, "Something went wrong while answering (a bug; the details are in the log)."), QUEUED)
        self.job = job
        self.busy_changed.emit(True)
        self.runner.start(job.task, progress=lambda event: self._on_event(job, event),
                          failed=lambda text: self.failed.emit(job, text),
                          finished=lambda: self._on_finished(job))
        return job

    # -- about a reply ---------------------------------------------------------------------------
    def feedback(self, message_id: int, rating: int, correction: str | None, *,
                 done: Callable[[object], None], failed: Callable[[str], None]) -> Task | None:
        """👍 (+1) / 👎 (-1) and an optional correction on a reply of the current chat
        (:meth:`mmchat.chat.ChatSession.feedback`); ``done`` gets the FeedbackResult."""
        return self._about_reply("feedback", lambda session: session.feedback(message_id, rating, correction),
                                 done=done, failed=failed)

    def why(self, message_id: int, *, done: Callable[[list], None], failed: Callable[[str], None]) -> Task | None:
        """The memories the reply ``message_id`` used (:meth:`mmchat.chat.ChatSession.why`)."""
        return self._about_reply("why", lambda session: session.why(message_id), done=done, failed=failed)

    def _about_reply(self, name: str, call: Callable[[object], object], *, done, failed) -> Task | None:
        engine, store, settings, memory = self._engine(), self._store(), self._settings(), self._memory()
        ref = self.current
        if memory is None and not ref.temporary:
            failed("Your profile is still loading; try again in a moment.")
            return None

        def work(emit, stop):
            return call(_session_for(ref, engine=engine, store=store, settings=settings, memory=memory))

        return self.runner.start(Task(f"reply-{name}", work), succeeded=done, failed=failed)

    def _on_event(self, job: Job, event) -> None:
        if event.kind == "user":
            job.user_stored = True
            message = event.message
            if message is not None and job.ref.conversation_id is None and not job.ref.temporary:
                job.ref.conversation_id = message.conversation_id
                self._refs[message.conversation_id] = job.ref
        self.event.emit(job, event)

    def _on_finished(self, job: Job) -> None:
        if self.job is job:
            self.job = None
        self.finished.emit(job)
        self.busy_changed.emit(False)


def _session_for(ref: ChatRef, *, engine, store, settings, memory):
    """The ref's ChatSession, (re)built when the engine or fusion settings changed. Worker thread.
    A temporary chat reads the profile (as the CLI's) but makes and marks no memories."""
    from mmchat.chat import ChatSession
    from mmchat.media import media_encoder

    signature = (id(engine), settings.fusion_image, settings.fusion_audio)
    if ref.session is None or ref.signature != signature:
        # A temporary chat keeps its in-memory store across rebuilds; None makes a new one.
        chat_store = ref.session.store if (ref.temporary and ref.session is not None) else (
            None if ref.temporary else store)
        conversation_id = ref.session.conversation_id if ref.session is not None else ref.conversation_id
        image, audio = settings.fusion_image, settings.fusion_audio
        # Built on the first turn with media: a text-only chat never waits for the image encoder.
        media = functools.partial(media_encoder, engine, image=image, audio=audio)
        ref.session = ChatSession(engine, chat_store, conversation_id, media=media, temporary=ref.temporary)
        ref.signature = signature
    ref.session.generation = settings.generation_config()
    ref.session.memory = memory
    return ref.session
