"""Train the fusion projectors from the app: in the task pool, with progress, stoppable.

The work is :func:`mmchat.fusion_train.train_fusion` on generated data (what ``mmchat
train-fusion`` does with no options). Training saves resumable state as it goes, so Stop ends it
at the next step and the next start carries on from the last saved state.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

from mmchat_ui.workers import Task, TaskRunner


class TrainingStopped(Exception):
    """Raised from the progress callback to end training early (state is saved every few steps)."""


def train_fusion_default(engine, progress: Callable[[str, int, int], None], stop) -> dict:
    """Prepare (or reuse) the generated data, train, evaluate and save the checkpoint the chat uses."""
    from mmchat.chat import SYSTEM_PROMPT
    from mmchat.fusion_train import prepare_data, prepare_vision_data, shipped_recipe, train_fusion
    from mmchat.media import checkpoint_dirs

    progress("preparing data", 0, 0)
    recipe = shipped_recipe(engine.model_name("llm"), engine.model_name("image"))
    train_dir, heldout_dir = (prepare_vision_data if recipe.vision_data else prepare_data)(recipe.data)
    if stop.is_set():
        raise TrainingStopped
    out = checkpoint_dirs(engine.model_name("llm"), engine.model_name("image"))[0]

    def step(done: int, total: int) -> None:
        if stop.is_set():
            raise TrainingStopped
        progress("training", done, total)

    return train_fusion(engine, train_dir=train_dir, heldout_dir=heldout_dir, out=out, config=recipe.train,
                        system_prompt=SYSTEM_PROMPT, progress=step, audio_from=recipe.audio_from)


class FusionTraining(QObject):
    progress = Signal(str, int, int)  # phase, done, total (0 total: unknown)
    running_changed = Signal(bool)
    finished = Signal(object)  # the evaluation report, or None when stopped or failed
    message = Signal(str)

    def __init__(self, runner: TaskRunner, *, train: Callable = train_fusion_default,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self._train = train
        self._task: Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self, engine) -> bool:
        if self._task is not None:
            return False

        def work(emit, stop):
            try:
                return self._train(engine, lambda phase, done, total: emit((phase, done, total)), stop)
            except TrainingStopped:
                return None

        task = Task("train-fusion", work)
        self._task = task
        self.running_changed.emit(True)
        self.runner.start(task, progress=lambda p: self.progress.emit(*p), succeeded=self._succeeded,
                          failed=lambda text: self.message.emit(f"Training failed: {text}"),
                          finished=lambda: self._finished(task))
        return True

    def stop(self) -> bool:
        if self._task is None:
            return False
        self._task.stop.set()
        self.message.emit("Stopping the training after this step (it resumes from here next time)…")
        return True

    def _succeeded(self, report) -> None:
        if report is None:
            self.message.emit("Training stopped; starting it again carries on where it left off.")
        else:
            self.message.emit("Fusion training finished; new chats use the trained projectors.")
        self.finished.emit(report)

    def _finished(self, task: Task) -> None:
        if task is self._task:
            self._task = None
            self.running_changed.emit(False)
