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
    model = slot.get()
    assert slot.get() is model and loads == ["test-model"]
    assert [s.state for s in statuses] == ["loading", "ready"]
    # A full collection would otherwise walk every one of the model's objects, holding the GIL
    # (140-230 ms with a real model loaded, which froze the GUI); frozen, it skips them. (The freeze
    # count is no measure: the load's first sweep also frees what earlier tests left frozen.)
    parts = {id(part) for part in model.parts}
    assert not any(id(o) in parts for o in gc.get_objects())  # the collector's generations skip frozen objects
    gc.unfreeze()
    assert sum(id(o) in parts for o in gc.get_objects()) == len(parts)  # ... and the check sees them otherwise


def test_a_replaced_engine_and_its_models_are_freed_by_the_next_load():
    """Frozen objects are never collected; an engine is a cycle (its slots call back into it), so
    the next load must unfreeze and collect before freezing again, or every model switch would
    keep the old models for good."""
    import weakref

    class Engine:  # the shape of mmchat.engine.Engine: slots holding a bound method of their owner
        def __init__(self) -> None:
            self.slot = _Slot("llm", "old", lambda name, progress: _Model(), self.notify)

        def notify(self, status) -> None:
            pass

    old = Engine()
    model = weakref.ref(old.slot.get())
    del old
    assert model() is not None  # frozen with its engine: only an explicit pass can free it
    _Slot("llm", "new", lambda name, progress: _Model(), lambda status: None).get()
    assert model() is None


def test_only_an_engines_first_load_walks_every_object():
    """The full pass (unfreeze + collect) runs once per engine: with the LLM loaded it held the GIL for
    about 300 ms, which each later load (image encoder, OCR) would otherwise add to the GUI's stalls."""
    from mmchat.engine import _Sweep

    sweep = _Sweep()
    _Slot("llm", "a", lambda name, progress: _Model(), lambda status: None, sweep).get()
    frozen = gc.get_freeze_count()
    unfrozen = []
    real = gc.unfreeze
    gc.unfreeze = lambda: unfrozen.append(1) or real()
    try:
        _Slot("image", "b", lambda name, progress: _Model(), lambda status: None, sweep).get()
    finally:
        gc.unfreeze = real
    assert not unfrozen and gc.get_freeze_count() >= frozen
