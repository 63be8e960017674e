"""The main window: sidebar, chat, composer and status bar, wired to the controllers.

The window owns the :class:`TaskRunner`; every model call runs there (see :mod:`mmchat_ui.workers`).
Building the window imports no model code, so it can be on screen before anything loads;
:meth:`MainWindow.start_background_work` then loads the models and probes microphone and speakers.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QObject, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QImage, QKeySequence, QShortcut
from PySide6.QtWidgets import (QApplication, QFrame, QHBoxLayout, QLabel, QMainWindow,
                               QSplitter, QToolButton, QVBoxLayout, QWidget)

from mmchat import settings as settings_mod
from mmchat.errors import MMChatError
from mmchat.settings import Settings
from mmchat.store import ConversationStore
from mmchat_ui import icons, markdown, rich_text, theme
from mmchat_ui.chat_controller import ChatController, Job
from mmchat_ui.chat_view import AssistantMessage, ChatView, PromptEdit
from mmchat_ui.composer import Composer, Draft
from mmchat_ui.conversation_list import ConversationList
from mmchat_ui.help_dialog import HelpDialog
from mmchat_ui.media_widgets import ImageViewer
from mmchat_ui.memory_widgets import CorrectionDialog, WhyDialog
from mmchat_ui.personal import Personalisation
from mmchat_ui.read_aloud import ReadAloud
from mmchat_ui.services import Services
from mmchat_ui.status_bar import ModelStatusBar
from mmchat_ui.training import FusionTraining
from mmchat_ui.voice import HOLD_TO_TALK_KEY, VoiceController
from mmchat_ui.workers import QUEUED, Task, TaskRunner

log = logging.getLogger(__name__)

RENDER_INTERVAL_MS = 40  # streamed tokens are drawn at most this often
SIDEBAR_WIDTH = 270  # px
COMPOSER_MAX_WIDTH = 800  # px, matches the conversation column
MODEL_ROLES = (("llm", "llm"), ("asr", "whisper"), ("image", "image_encoder"), ("ocr", "text_reader"),
               ("faces", "face_finder"))  # slot, Engine attribute


class _EngineBridge(QObject):
    """Carries engine status callbacks (from any thread) to the GUI thread."""

    status = Signal(object, object)  # engine, SlotStatus


class Banner(QFrame):
    """A dismissable message above the conversation (a moved-aside database, a crash report)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 6, 6, 6)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setIcon(icons.icon("close", theme.current().muted))
        close.setToolTip("Dismiss")
        close.clicked.connect(self.hide)
        row.addWidget(self.label, 1)
        row.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_text(self, text: str) -> None:
        self.label.setText(text)
        self.show()


class MainWindow(QMainWindow):
    def __init__(self, *, store: ConversationStore, settings: Settings, services: Services,
                 theme_manager: theme.ThemeManager | None = None, save_settings: bool = True) -> None:
        super().__init__()
        self.setWindowTitle("mmchat")
        self.setAcceptDrops(True)
        self.store = store
        self.settings = settings
        self.services = services
        self.theme_manager = theme_manager
        self.save_settings = save_settings
        self._closing = False
        self.runner = TaskRunner(self)
        self.warmed_up = False  # the start-up warm-up (Markdown, message widgets) is done
        self.runner.crashed.connect(self._task_crashed)
        self._bridge = _EngineBridge(self)
        self._bridge.status.connect(self._engine_status, QUEUED)
        self._status_callback = None
        self.engine = None
        self._reply: AssistantMessage | None = None
        self._welcome = None  # the first-run welcome while it is open
        self._reply_text = ""
        self._render_timer = QTimer(self, singleShot=True, interval=RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render_reply)

        self._build()
        self._wire_controllers()
        self._shortcuts()
        if theme_manager is not None:
            theme_manager.changed.connect(self.apply_theme)
        self._set_engine(services.make_engine(settings))
        self.personal.open(self._profile_folder(), load_embedder=services.load_models)
        self.new_chat(temporary=settings.temporary_by_default)
        self.resize(1180, 780)

    def _wire_controllers(self) -> None:
        self.personal = Personalisation(self.runner, make_memory=self.services.make_memory, parent=self)
        self.personal.ready.connect(lambda service: self._use_profile_conversations(service.profile_id))
        self.personal.profile_switched.connect(self._profile_switched)
        self.personal.failed.connect(self.show_status_message)
        self.personal.notice.connect(self.banner.show_text)
        self.controller = ChatController(self.runner, engine=lambda: self.engine, store=lambda: self.store,
                                         settings=lambda: self.settings, memory=lambda: self.personal.service,
                                         parent=self)
        self.controller.event.connect(self._on_chat_event)
        self.controller.failed.connect(self._on_chat_failed)
        self.controller.finished.connect(self._on_chat_finished)
        self.controller.busy_changed.connect(self._on_busy)
        self.voice = VoiceController(
            self.composer, self.runner, make_recorder=lambda: self.services.make_recorder(self.settings),
            transcribe=lambda audio: self.engine.whisper.transcribe(audio),
            send_at_once=lambda: self.settings.voice_send_at_once,
            max_seconds=lambda: float(self.settings.max_recording_s), parent=self)
        self.voice.transcribed.connect(self.composer.set_voice_clip)
        self.voice.send_clip.connect(lambda audio: self.send(Draft(audio=audio)))
        self.voice.message.connect(self.composer.show_error)
        self.read_aloud = ReadAloud(self.runner, make_speaker=self.services.make_speaker,
                                    make_output=self.services.make_output, parent=self)
        self.read_aloud.message.connect(self.show_status_message)
        self.read_aloud.speaking_changed.connect(self._on_speaking)
        self.training = FusionTraining(self.runner, train=self.services.train_fusion, parent=self)
        self.training.progress.connect(self.status.show_training)
        self.training.running_changed.connect(self._on_training)
        self.training.message.connect(lambda text: self.show_status_message(text, 15_000))
        self.training.finished.connect(lambda _report: self.controller.rebuild_sessions())
        self.status.stop_training_requested.connect(self.training.stop)

    # -- layout ----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.sidebar = ConversationList(self.store)
        self.sidebar.setMinimumWidth(200)
        self.sidebar.conversation_selected.connect(self.open_conversation)
        self.sidebar.new_chat_requested.connect(lambda: self.new_chat())
        self.sidebar.settings_requested.connect(self.open_settings)
        self.sidebar.help_requested.connect(self.show_help)
        self.sidebar.profile_requested.connect(self.open_profile)
        self.sidebar.conversation_deleted.connect(self._conversation_deleted)
        splitter = QSplitter()
        splitter.setHandleWidth(1)
        splitter.addWidget(self.sidebar)
        splitter.addWidget(self._build_chat_pane())
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([SIDEBAR_WIDTH, 900])
        splitter.setCollapsible(1, False)
        self.setCentralWidget(splitter)
        self.status = ModelStatusBar()
        self.setStatusBar(self.status)

    def _build_header(self) -> QFrame:
        header = QFrame(objectName="chatHeader")
        row = QHBoxLayout(header)
        row.setContentsMargins(18, 8, 12, 8)
        self.title = QLabel("New chat", objectName="chatTitle")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.model_label = QLabel(objectName="messageMeta")
        self.temporary_button = self._header_button("eye-off", "Temporary chat: nothing is stored (Ctrl+Shift+N)")
        self.temporary_button.setCheckable(True)
        self.temporary_button.clicked.connect(lambda checked: self.new_chat(temporary=checked))
        self.speak_button = self._header_button("volume-off", "Read replies aloud")
        self.speak_button.setCheckable(True)
        self.speak_button.setChecked(self.settings.read_aloud)
        self.speak_button.toggled.connect(self._toggle_read_aloud)
        row.addWidget(self.title)
        row.addSpacing(8)
        row.addWidget(self.model_label)
        row.addStretch(1)
        row.addWidget(self.speak_button)
        row.addWidget(self.temporary_button)
        return header

    def _build_chat_pane(self) -> QWidget:
        pane = QWidget(objectName="chatPane")
        column = QVBoxLayout(pane)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self._build_header())
        self.banner = Banner()
        column.addLayout(_padded(self.banner, 24, 8, 24, 0))
        self.chat = ChatView()
        self.chat.edit_submitted.connect(self.edit_message)
        self.chat.regenerate_requested.connect(self.regenerate)
        self.chat.read_aloud_requested.connect(self.speak)
        self.chat.image_clicked.connect(self.show_image)
        self.chat.suggestion_chosen.connect(self._use_suggestion)
        self.chat.memory_action.connect(self._memory_action)
        self.chat.rated.connect(self.rate_reply)
        self.chat.why_requested.connect(self.why_reply)
        column.addWidget(self.chat, 1)
        self.composer = Composer(self.runner)
        self.composer.setMaximumWidth(COMPOSER_MAX_WIDTH)
        self.composer.submitted.connect(self.send)
        self.composer.stop_requested.connect(self.stop)
        self.composer.image_clicked.connect(self.show_image)
        column.addLayout(_padded(self.composer, 24, 4, 24, 4))
        self.footnote = QLabel("mmchat runs offline on this computer. Replies can be wrong.", objectName="noticeLabel")
        self.footnote.setAlignment(Qt.AlignmentFlag.AlignCenter)
        column.addWidget(self.footnote)
        column.addSpacing(6)
        return pane

    def _header_button(self, name: str, tooltip: str) -> QToolButton:
        button = QToolButton()
        button.setIcon(icons.icon(name, theme.current().muted))
        button.setIconSize(QSize(18, 18))
        button.setToolTip(tooltip)
        button.setProperty("icon_name", name)
        button.setCursor(Qt.CursorShape.PointingHandCursor)
        return button

    def _shortcuts(self) -> None:
        bindings = {
            "Ctrl+N": lambda: self.new_chat(),
            "Ctrl+Shift+N": lambda: self.new_chat(temporary=True),
            "Ctrl+K": self._focus_search,
            "Ctrl+F": self._focus_search,
            "Ctrl+L": lambda: self.composer.edit.setFocus(),
            "Ctrl+O": self.composer.choose_files,
            "Ctrl+R": self.regenerate,
            "Ctrl+Shift+C": self.copy_last_reply,
            "Ctrl+Shift+S": self.speak_last_reply,
            "Ctrl+Z": self.sidebar.undo_delete,
            "Ctrl+,": self.open_settings,
            "Ctrl+Shift+P": self.open_profile,
            "F1": self.show_help,
            "Ctrl+/": self.show_help,
            "Ctrl+Q": self.close,
            "Ctrl+V": self.paste,
            "Esc": self.escape,
        }
        self._shortcut_objects = []
        for keys, slot in bindings.items():
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.activated.connect(slot)
            self._shortcut_objects.append(shortcut)

    # -- engine ----------------------------------------------------------------------------------
    def _set_engine(self, engine) -> None:
        # An engine outlives the window that used it (the services share one, an old one lingers in
        # a running task); a callback left behind would emit through a deleted bridge, and the
        # RuntimeError would fail the next model load of whoever uses the engine then.
        self._forget_engine()
        self.engine = engine
        self._status_callback = lambda status, e=engine: self._bridge.status.emit(e, status)
        engine.add_status_callback(self._status_callback)
        for status in engine.status().values():
            self.status.update_status(status)
        self.model_label.setText(engine.chat_label)

    def _forget_engine(self) -> None:
        if self.engine is not None and self._status_callback is not None:
            self.engine.remove_status_callback(self._status_callback)
        self._status_callback = None

    def _engine_status(self, engine, status) -> None:
        if engine is self.engine:
            self.status.update_status(status)
            if self._welcome is not None:
                self._welcome.update_status(status)

    def start_background_work(self) -> None:
        """After the window shows: load the models and find out about microphone and speakers."""
        # The warm-up first: the first message renders as plain text until it is done.
        self.runner.start(Task("warm-up", lambda emit, stop: markdown.warm_up()), succeeded=self._warm_up_widgets,
                          finished=rich_text.render_deferred)
        if self.services.load_models:
            self.load_models()
        self.probe_audio()

    def _warm_up_widgets(self, _result=None) -> None:
        """Build a message pair off screen once, so Qt's text engine and the message widgets are
        initialised before the first reply streams in (a one-time ~70 ms now, not mid-reply)."""
        from mmchat.store import Message
        from mmchat_ui.chat_view import UserMessage

        user = UserMessage(Message(0, 0, "user", "warm up", 0.0))
        reply = AssistantMessage(Message(0, 0, "assistant", "*warm* `up`\n\n```python\nx = 1\n```", 0.0))
        for widget in (user, reply):
            widget.ensurePolished()
            widget.adjustSize()
            widget.deleteLater()
        self.warmed_up = True

    def load_models(self) -> None:
        engine = self.engine

        def work(emit, stop):
            import mmchat.chat  # noqa: F401  (now, not on the first send: it imports torch)

            for _role, attribute in MODEL_ROLES:
                if stop.is_set():
                    return
                try:
                    getattr(engine, attribute)
                except Exception:  # shown in the status bar through the slot's status
                    log.warning("loading %s failed", attribute, exc_info=True)

        self.runner.start(Task("load-models", work))

    def probe_audio(self) -> None:
        settings = replace(self.settings)

        def work(emit, stop):
            return self.services.microphone(settings), self.services.audio_output()

        def done(result) -> None:
            mic, speakers = result
            self.voice.set_available(mic.ok, mic.reason)
            self.read_aloud.set_available(speakers.ok, speakers.reason)
            self._update_speak_buttons()

        self.runner.start(Task("probe-audio", work), succeeded=done)

    # -- conversations ---------------------------------------------------------------------------
    def new_chat(self, *, temporary: bool = False) -> None:
        if self.controller.busy:
            self.controller.stop()
        self._reply = None
        self.controller.new_chat(temporary=temporary)
        self.sidebar.set_current(None)
        self.chat.set_messages([], temporary=temporary)
        self._update_header()
        self.composer.edit.setFocus()

    def open_conversation(self, conversation_id: int) -> None:
        if self.store.get_conversation(conversation_id) is None:
            self.sidebar.refresh()
            return
        self._reply = None
        self.controller.open(conversation_id)
        self.sidebar.set_current(conversation_id)
        self.chat.set_messages(self.store.messages(conversation_id))
        if self.controller.busy and self.controller.job.ref is self.controller.current:
            self._reply = self.chat.begin_reply()  # still streaming into this one
            self._reply.set_text(self._reply_text)
        self.chat.set_busy(self.controller.busy)
        self._update_header()

    def _conversation_deleted(self, conversation_id: int) -> None:
        if self.controller.current.conversation_id == conversation_id:
            self.new_chat()
        self.controller.forget(conversation_id)

    def _update_header(self) -> None:
        ref = self.controller.current
        if ref.temporary:
            title = "Temporary chat"
        elif ref.conversation_id is not None:
            conversation = self.store.get_conversation(ref.conversation_id)
            title = conversation.title if conversation else "New chat"
        else:
            title = "New chat"
        self.title.setText(title)
        self.temporary_button.setChecked(ref.temporary)
        self.chat.set_temporary(ref.temporary)
        self.chat.set_personal(not ref.temporary)

    # -- sending and replies ---------------------------------------------------------------------
    def _training_blocks_chat(self) -> bool:
        """The LLM is being trained: a turn would race the training for it."""
        if self.training.running:
            self.composer.show_error("The model is busy with fusion training; stop it (status bar) to chat.")
        return self.training.running

    def _on_training(self, running: bool) -> None:
        if not running:
            self.status.hide_training()

    def start_training(self) -> None:
        if self.controller.busy:
            self.show_status_message("Wait for the reply to finish, then start the training.")
        elif self.training.start(self.engine):
            self.status.show_training("starting", 0, 0)

    def send(self, draft: Draft) -> None:
        if self.controller.busy or draft.empty or self._training_blocks_chat():
            return
        self.read_aloud.stop()
        self.composer.clear()
        self.composer.hide_error()
        self._reply_text = ""
        self.controller.send(draft)

    def regenerate(self) -> None:
        last = self.chat.last_reply()
        if self.controller.busy or last is None or last.streaming or self._training_blocks_chat():
            return
        self.read_aloud.stop()
        self.chat.remove(last)
        self._reply_text = ""
        self._start_reply()
        self.controller.regenerate()

    def edit_message(self, message_id: int, text: str) -> None:
        if self.controller.busy or self._training_blocks_chat():
            return
        self.read_aloud.stop()
        self._reply_text = ""
        self.controller.edit(message_id, text)

    def stop(self) -> None:
        self.controller.stop()

    def _start_reply(self) -> None:
        self._reply = self.chat.begin_reply()
        if self._reply_text:
            self._reply.set_text(self._reply_text)

    def _on_chat_event(self, job: Job, event) -> None:
        visible = job.ref is self.controller.current
        if event.kind == "user":
            if visible:
                if job.kind == "edit":
                    self.chat.truncate_from(job.edit_id)
                draft = job.draft
                self.chat.add_user(event.message, previews=[p.thumbnail for p in draft.images] if draft else None)
                self._start_reply()
            # The sidebar and title in a later turn of the event loop: small slices keep it responsive.
            QTimer.singleShot(0, self, lambda: self._after_user_message(job))
        elif event.kind == "notice" and visible:
            self.chat.add_notice(event.text, before=self._reply)
        elif event.kind == "memory" and visible:
            for memory in event.memories:
                self.chat.add_memory_note(memory, before=self._reply)
        elif event.kind == "token":
            self._reply_text += event.text
            if not self._render_timer.isActive():
                self._render_timer.start()
        elif event.kind == "done":
            self._reply_text = event.text
            self._render_timer.stop()
            if visible and self._reply is not None:
                self.chat.finish_reply(self._reply, event.message, text=event.text)
            self._reply = None
            message = event.message
            if self.settings.read_aloud and message is not None and message.status == "complete" and event.text:
                self.speak(event.text)

    def _after_user_message(self, job: Job) -> None:
        if self._closing:
            return
        self.sidebar.refresh()
        if job.ref is self.controller.current:
            self.sidebar.set_current(job.ref.conversation_id)
            self._update_header()

    def _render_reply(self) -> None:
        job = self.controller.job
        if self._reply is not None and job is not None and job.ref is self.controller.current:
            self._reply.set_text(self._reply_text)

    def _on_chat_failed(self, job: Job, text: str) -> None:
        visible = job.ref is self.controller.current
        if job.kind == "send" and not job.user_stored and job.draft is not None:
            self.composer.restore(job.draft)
            self.composer.show_error(text)
            if self._reply is not None:
                self.chat.remove(self._reply)
                self._reply = None
            return
        if not visible:
            self.show_status_message(text)
        elif self._reply_text and self._reply is not None:  # keep what was said, with the error under it
            self.chat.finish_reply(self._reply, None, text=self._reply_text, error=text)
            self._reply = None
        else:
            if self._reply is not None:
                self.chat.remove(self._reply)
                self._reply = None
            self.chat.add_notice(text, error=True)

    def _on_chat_finished(self, job: Job) -> None:
        self._render_timer.stop()
        if self._reply is not None and job.ref is self.controller.current:
            # Ended without "done" (an error was already shown, or the task stopped early).
            self.chat.finish_reply(self._reply, None, text=self._reply_text)
            self._reply = None
        self.sidebar.refresh()
        self._update_header()

    def _on_busy(self, busy: bool) -> None:
        self.composer.set_busy(busy)
        self.chat.set_busy(busy)

    def _use_suggestion(self, text: str) -> None:
        self.composer.set_text(text)
        self.composer.edit.setFocus()

    # -- profile and memories --------------------------------------------------------------------
    def _profile_folder(self) -> Path | None:
        """The profile database lives next to the conversation database (in memory with an in-memory store)."""
        path = self.store.db.path
        return path.parent if path is not None else None

    def _use_profile_conversations(self, profile_id: int) -> None:
        """Conversations belong to a profile: show (and store into) those of ``profile_id``."""
        if self.store.profile_id == profile_id:
            return
        self.controller.stop()
        self.store.use_profile(profile_id)
        self.controller.forget_all()
        self.sidebar.refresh()
        self.new_chat(temporary=self.controller.current.temporary)

    def _profile_switched(self, profile) -> None:
        self._use_profile_conversations(profile.id)
        self.show_status_message(f"Using profile “{profile.name}”", 4000)

    def _memory_action(self, note, verb: str, memory_id: int) -> None:
        """Remember / Not now / Undo on a memory note in the conversation."""
        results = {"approve": lambda m: f"Remembered: “{m.text}”",
                   "reject": lambda _m: "Not remembered (it will not be suggested again).",
                   "delete": lambda _m: "Forgotten."}

        def done(memory) -> None:
            if note in self.chat.items():
                note.set_result(results[verb](memory))

        def failed(text: str) -> None:
            if note in self.chat.items():
                note.set_failed(text)

        self.personal.run(verb, lambda service: getattr(service, verb)(memory_id), done=done, failed=failed)

    def rate_reply(self, reply: AssistantMessage, rating: int) -> None:
        """👍 is sent at once; 👎 asks (optionally) what was wrong first."""
        if rating > 0:
            self._send_feedback(reply, rating, None)
            return
        dialog = CorrectionDialog(self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self._send_feedback(reply, rating, dialog.correction()))
        dialog.open()
        self._correction_dialog = dialog

    def _send_feedback(self, reply: AssistantMessage, rating: int, correction: str | None) -> None:
        def done(result) -> None:
            if reply in self.chat.items():
                reply.rating_stored(rating)
            changes = [f"{key.replace('_', ' ')} is now “{value}”" for key, value in result.changed.items()]
            if result.memory is not None:
                changes.append("your correction was kept as a memory" if result.memory.status == "active"
                               else "your correction waits for approval in Profile & memory")
            self.show_status_message("Thanks for the feedback" + (f": {'; '.join(changes)}." if changes else "."))
            self.personal.refresh()  # the profile or memories may have changed

        self.controller.feedback(reply.message.id, rating, correction, done=done, failed=self.show_status_message)

    def why_reply(self, message_id: int) -> None:
        def done(memories: list) -> None:
            dialog = WhyDialog(memories, self)
            dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            dialog.manage_requested.connect(self.open_profile)
            dialog.show()
            self._why_dialog = dialog

        self.controller.why(message_id, done=done, failed=self.show_status_message)

    def open_profile(self):
        """Profile & memory (Ctrl+Shift+P): who you are, how you like replies, what is remembered."""
        from mmchat_ui.profile_dialog import ProfileDialog

        dialog = ProfileDialog(self.personal, parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        self._profile_dialog = dialog
        return dialog

    # -- read aloud ------------------------------------------------------------------------------
    def speak(self, text: str) -> None:
        if self.read_aloud.speaking:
            self.read_aloud.stop()
            return
        self.read_aloud.speak(text)

    def speak_last_reply(self) -> None:
        last = self.chat.last_reply()
        if last is not None and last.text:
            self.speak(last.text)

    def _toggle_read_aloud(self, on: bool) -> None:
        self.speak_button.setProperty("icon_name", "volume" if on else "volume-off")
        self.speak_button.setIcon(icons.icon("volume" if on else "volume-off",
                                             theme.current().accent if on else theme.current().muted))
        if on != self.settings.read_aloud:
            self._apply_settings(replace(self.settings, read_aloud=on))
        if not on:
            self.read_aloud.stop()

    def _on_speaking(self, speaking: bool) -> None:
        self.show_status_message("Reading aloud… (Esc stops)" if speaking else "", 0 if speaking else 1)

    def _update_speak_buttons(self) -> None:
        available = self.read_aloud.available
        reason = "" if available else f"Read-aloud is off: {self.read_aloud.reason}"
        self.speak_button.setEnabled(available)
        self.speak_button.setToolTip("Read replies aloud" if available else reason)

    # -- keyboard and clipboard ------------------------------------------------------------------
    def escape(self) -> None:
        focus = QApplication.focusWidget()
        if isinstance(focus, PromptEdit) and focus.objectName() == "editBox":
            focus.cancelled.emit()
        elif self.voice.cancel():
            pass
        elif self.controller.busy:
            self.controller.stop()
        elif self.read_aloud.stop():
            pass
        else:
            self.composer.hide_error()

    def paste(self) -> None:
        mime = QGuiApplication.clipboard().mimeData()
        if mime is None:
            return
        if not self.composer.add_from_mime(mime) and mime.hasText():
            self.composer.edit.insertPlainText(mime.text())
        self.composer.edit.setFocus()

    def copy_last_reply(self) -> None:
        last = self.chat.last_reply()
        if last is not None and last.text:
            QGuiApplication.clipboard().setText(last.text)
            self.show_status_message("Reply copied", 2000)

    def _focus_search(self) -> None:
        self.sidebar.search.setFocus()
        self.sidebar.search.selectAll()

    # Hold-to-talk: F8 reaches the window from whichever child has focus (none of them uses it).
    def keyPressEvent(self, event) -> None:
        if event.key() == HOLD_TO_TALK_KEY:
            if not event.isAutoRepeat():
                self.voice.press()
            event.accept()
        else:
            super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:
        if event.key() == HOLD_TO_TALK_KEY:
            if not event.isAutoRepeat():
                self.voice.release()
            event.accept()
        else:
            super().keyReleaseEvent(event)

    # -- drag and drop anywhere on the window ----------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        from mmchat_ui.composer import media_from_mime

        paths, images = media_from_mime(event.mimeData())
        if paths or images:
            self.composer.set_dragging(True)
            event.acceptProposedAction()

    def dragLeaveEvent(self, event) -> None:
        self.composer.set_dragging(False)

    def dropEvent(self, event) -> None:
        self.composer.set_dragging(False)
        if self.composer.add_from_mime(event.mimeData()):
            event.acceptProposedAction()

    # -- dialogs ---------------------------------------------------------------------------------
    def show_image(self, image: QImage) -> None:
        viewer = ImageViewer(image, self)
        viewer.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        viewer.show()
        self._viewer = viewer

    def show_help(self) -> None:
        dialog = HelpDialog(self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.about_requested.connect(self.show_about)
        dialog.show()
        self._help = dialog

    def show_about(self):
        """Help → About: versions, models and licences, data paths (``mmchat doctor``'s report)."""
        from mmchat_ui.about_dialog import AboutDialog

        dialog = AboutDialog(self.runner, parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        self._about = dialog
        return dialog

    def maybe_show_welcome(self):
        """The first-run welcome, unless it was shown before (the app calls this after the first paint)."""
        if self.settings.welcome_shown or self._welcome is not None:
            return None
        from mmchat import paths
        from mmchat_ui.welcome import WelcomeDialog

        dialog = WelcomeDialog(data_dir=self.settings.database_path().parent, cache_dir=paths.cache_dir(), parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        for status in self.engine.status().values():
            dialog.update_status(status)
        dialog.finished.connect(self._welcome_closed)
        self._welcome = dialog
        log.info("showing the first-run welcome")
        dialog.show()
        return dialog

    def _welcome_closed(self, _result: int = 0) -> None:
        self._welcome = None
        if not self.settings.welcome_shown:
            self._apply_settings(replace(self.settings, welcome_shown=True))

    def open_settings(self) -> None:
        from mmchat_ui.settings_dialog import SettingsDialog

        profile = self.personal.profile
        dialog = SettingsDialog(self.settings, services=self.services, runner=self.runner,
                                data_folder=self.settings.database_path().parent,
                                memory_mode=profile.memory_mode if profile is not None else None, parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.settings_accepted.connect(self._apply_settings)
        dialog.wipe_requested.connect(self.wipe_all_data)
        dialog.train_requested.connect(self.start_training)
        dialog.memory_mode_chosen.connect(lambda mode: self.personal.run(
            "memory-mode", lambda service: service.set_profile(memory_mode=mode)))
        dialog.show()
        self._settings_dialog = dialog

    def _apply_settings(self, new: Settings) -> None:
        old, self.settings = self.settings, new
        if self.save_settings:
            try:
                settings_mod.save(new)
            except MMChatError as exc:
                self.banner.show_text(str(exc))
        if new.theme != old.theme and self.theme_manager is not None:
            self.theme_manager.apply(new.theme)
        engine_settings = ("llm", "asr", "image_encoder", "llm_threads", "server_url", "server_model")
        if any(getattr(new, name) != getattr(old, name) for name in engine_settings):
            self._set_engine(self.services.make_engine(new))
            if self.services.load_models:
                self.load_models()
        if (new.input_device, new.max_recording_s) != (old.input_device, old.max_recording_s):
            self.probe_audio()
        if new.database_path() != old.database_path():
            self._open_store(new.database_path())
        if new.read_aloud != self.speak_button.isChecked():
            self.speak_button.setChecked(new.read_aloud)

    def _open_store(self, path: Path) -> None:
        try:
            store = ConversationStore(path)
        except MMChatError as exc:
            self.banner.show_text(f"Could not open the data folder {path.parent}: {exc}")
            return
        self.controller.stop()
        old, self.store = self.store, store
        self.sidebar.set_store(store)
        self.controller.forget_all()
        self.new_chat()
        if store.notice:
            self.banner.show_text(store.notice)
        self.personal.open(self._profile_folder(), load_embedder=self.services.load_models)
        if not self.controller.busy:  # a reply still running keeps the old store until it ends
            old.close()

    def wipe_all_data(self) -> None:
        """Delete every conversation and its attachments for good (the settings stay)."""
        if self.controller.busy:
            self.show_status_message("Stop the reply first, then wipe the data.")
            return
        path = self.store.db.path
        self.store.close()
        if path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        self.store = ConversationStore(path if path is not None else ":memory:", profile_id=self.store.profile_id)
        self.sidebar.set_store(self.store)
        self.controller.forget_all()
        self.new_chat()
        self.show_status_message("All conversations were deleted.", 5000)

    # -- messages, errors ------------------------------------------------------------------------
    def show_status_message(self, text: str, timeout_ms: int = 6000) -> None:
        if text:
            self.status.showMessage(text, timeout_ms)
        else:
            self.status.clearMessage()

    def _task_crashed(self, name: str, traceback_text: str) -> None:
        from mmchat.crash_report import write_traceback

        report = write_traceback(traceback_text, thread=f"task {name}")
        where = f"a report was saved to {report}" if report else "the details are in the log"
        if not name.startswith("chat-"):  # chat turns report their own failure in the conversation
            self.banner.show_text(f"Something went wrong ({name}); this is a bug and {where}.")

    def show_notice(self, text: str) -> None:
        self.banner.show_text(text)

    # -- theme -----------------------------------------------------------------------------------
    def apply_theme(self, t: theme.Theme) -> None:
        for button in (self.temporary_button,):
            button.setIcon(icons.icon(button.property("icon_name"), t.muted))
        self._toggle_read_aloud(self.speak_button.isChecked())
        self.sidebar.apply_theme(t)
        self.chat.apply_theme(t)
        self.composer.apply_theme(t)
        self.status.apply_theme(t)

    # -- shutdown --------------------------------------------------------------------------------
    def closeEvent(self, event) -> None:
        if not self._closing:
            self._closing = True
            if self.theme_manager is not None:
                self.theme_manager.changed.disconnect(self.apply_theme)
            self.voice.shutdown()
            self.read_aloud.stop()
            self.controller.stop()
            self.hide()
            self.runner.shutdown()
            self._forget_engine()
            self.controller.blockSignals(True)  # results still queued for a window that is gone
            try:
                self.store.purge_deleted()
            except Exception:
                log.warning("could not purge deleted conversations", exc_info=True)
            self.store.close()
            self.personal.close()
        event.accept()


def _padded(widget: QWidget, left: int, top: int, right: int, bottom: int) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setContentsMargins(left, top, right, bottom)
    row.addWidget(widget)
    return row
