"""Engine slots: lazy, once, with status, and the loaded model kept out of the cyclic GC's walks."""

import gc

from mmchat.engine import _Slot


class _Model:
    def __init__(self) -> None:
        self.parts = [{"index": i, "self": None} for i in range(20_000)]  # GC-tracked containers
        for part in self.parts:
            part["self"] = part  # cycles, as module trees have


def test_a_slot_loads_once_reports_status_and_freezes_the_model_out_of_the_gc():
    statuses, loads = [], []

    def loader(name, progress):
        loads.append(name)
        return _Model()

    slot = _Slot("llm", "test-model", loader, statuses.append)
    frozen = gc.get_freeze_count()
    model = slot.get()
    assert slot.get() is model and loads == ["test-model"]
    assert [s.state for s in statuses] == ["loading", "ready"]
    # A full collection would otherwise walk every one of the model's objects, holding the GIL
    # (140-230 ms with a real model loaded, which froze the GUI); frozen, it skips them.
    assert gc.get_freeze_count() >= frozen + len(model.parts)
