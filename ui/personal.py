"""The user's profile and memories for the window: one :class:`mmchat.memory.MemoryService`, used off
the GUI thread.

:class:`Personalisation` opens the profile database (``profile.sqlite3`` next to the conversation
database, as the CLI keeps it) in a worker: the service loads the MiniLM embedder on first use, and
torch must not be imported on the GUI thread. Everything that touches the service afterwards
(proposals confirmed in the chat, the profile editor's edits, export, import, switching profiles)
runs as a task in the window's :class:`TaskRunner` and reports back through queued signals. The
profile as last read is kept in :attr:`Personalisation.profile` for widgets to show without a query.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from mmchat.errors import MMChatError
from mmchat_ui.workers import Task, TaskRunner

log = logging.getLogger(__name__)


class Personalisation(QObject):
    ready = Signal(object)  # the MemoryService, once opened (again after the data folder changed)
    changed = Signal()  # profile fields or memories changed: editors re-read
    profile_switched = Signal(object)  # Profile: another local profile is in use
    failed = Signal(str)  # expected trouble nobody else reported
    notice = Signal(str)  # the profile database was moved aside, or only works in memory

    def __init__(self, runner: TaskRunner, *, make_memory: Callable[[Path | str], object],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self._make_memory = make_memory
        self.service = None  # MemoryService once ready
        self.profile = None  # Profile, as last read
        self._retired: list = []  # services of an earlier data folder, closed on shutdown

    # -- opening ---------------------------------------------------------------------------------
    def open(self, folder: Path | None, *, load_embedder: bool) -> None:
        """Open (or reopen) the profile database in ``folder`` (None: a throwaway one in memory)."""
        make = self._make_memory

        def work(emit, stop):
            from mmchat.profile import FILE_NAME  # imports numpy: not on the GUI thread

            path = folder / FILE_NAME if folder is not None else ":memory:"
            try:
                service = make(path)
                notice = service.profiles.notice
            except MMChatError as exc:  # not even a fresh file could be made: carry on in memory
                service = make(":memory:")
                notice = f"{exc} Profile and memory changes in this session are not saved."
            return service, notice, service.profile

        def opened(result) -> None:
            service, notice, profile = result
            if self.service is not None:
                self._retired.append(self.service)
            self.service, self.profile = service, profile
            if notice:
                self.notice.emit(notice)
            self.ready.emit(service)
            if load_embedder:
                self._warm_up(service)

        self.runner.start(Task("open-profile", work), succeeded=opened, failed=self.failed.emit)

    def _warm_up(self, service) -> None:
        """Load the embedder now, so the first reply does not wait for it."""
        def work(emit, stop):
            service.embed(["warm up"])
            return service.embedding_note

        self.runner.start(Task("load-embedder", work),
                          succeeded=lambda note: note and self.notice.emit(note), failed=self.failed.emit)

    # -- work on the service ---------------------------------------------------------------------
    def run(self, name: str, job: Callable[[object], object], *, done: Callable[[object], None] | None = None,
            failed: Callable[[str], None] | None = None, changes: bool = True) -> Task | None:
        """Run ``job(service)`` in a worker; then ``done(result)`` on the GUI thread and, if the job
        ``changes`` something, ``changed``. Expected trouble goes to ``failed`` (default: the
        :attr:`failed` signal)."""
        report = failed or self.failed.emit
        service = self.service
        if service is None:
            report("Your profile is still loading; try again in a moment.")
            return None

        def work(emit, stop):
            return job(service), service.profile

        def succeeded(result) -> None:
            value, self.profile = result
            if done is not None:
                done(value)
            if changes:
                self.changed.emit()

        return self.runner.start(Task(f"profile-{name}", work), succeeded=succeeded, failed=report)

    def refresh(self) -> None:
        """Re-read the profile (something else, e.g. feedback, may have changed it)."""
        self.run("read", lambda service: None)

    def switch(self, profile_id: int, *, failed: Callable[[str], None] | None = None) -> None:
        """Use another local profile from now on (remembered for the next start, as ``mmchat profile use``)."""
        def job(service):
            service.profiles.use_profile(profile_id)
            service.use_profile(profile_id)

        self.run("switch", job, done=lambda _none: self.profile_switched.emit(self.profile), failed=failed)

    def create(self, name: str, *, failed: Callable[[str], None] | None = None) -> None:
        """Make a new local profile and switch to it (as ``mmchat profile create``)."""
        def job(service):
            profile = service.profiles.create_profile(name)
            service.profiles.use_profile(profile.id)
            service.use_profile(profile.id)

        self.run("create", job, done=lambda _none: self.profile_switched.emit(self.profile), failed=failed)

    def close(self) -> None:
        """After the runner has shut down: close every profile database this window opened."""
        for service in [*self._retired, *([self.service] if self.service is not None else [])]:
            try:
                service.profiles.close()
            except Exception:
                log.warning("could not close the profile database", exc_info=True)
        self._retired.clear()
