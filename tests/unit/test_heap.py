"""The heap guard: bulk changes freeze the heap, full collections are timed."""

import gc

from ryu_apps.framework.heap import BULK_ENTRIES, HeapGuard


def test_bulk_freezes_and_small_changes_do_not():
    guard = HeapGuard()
    try:
        before = gc.get_freeze_count()
        assert not guard.after_bulk(BULK_ENTRIES - 1) and gc.get_freeze_count() == before
        keep = [{"flow": i} for i in range(20000)]  # long-lived state, like a desired table
        assert guard.after_bulk(BULK_ENTRIES) and guard.freezes == 1
        assert gc.get_freeze_count() >= before + len(keep)
        gc.collect()
        js = guard.json()
        assert js["full_collections"] >= 1 and js["full_collection_ms"]["max"] >= 0
        assert js["frozen"] >= before + len(keep)  # as of the freeze (what refcounting freed since is gone)
    finally:
        gc.unfreeze()
        guard.close()
    assert guard._on_gc not in gc.callbacks


def test_reading_the_guard_does_not_walk_the_frozen_heap(monkeypatch):
    # gc.get_freeze_count walks the whole frozen list (100-300 ms with millions of objects):
    # /v1/health reads the guard on every call, so it must come from the last freeze
    import ryu_apps.framework.heap as heap

    guard = HeapGuard()
    try:
        assert guard.after_bulk(BULK_ENTRIES)
        calls = []
        real = gc.get_freeze_count
        monkeypatch.setattr(heap.gc, "get_freeze_count", lambda: calls.append(1) or real())
        for _ in range(3):
            assert guard.json()["frozen"] == guard.frozen > 0
        assert calls == []
    finally:
        gc.unfreeze()
        guard.close()
