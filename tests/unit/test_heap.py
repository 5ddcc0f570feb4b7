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
        assert js["frozen"] == gc.get_freeze_count()
    finally:
        gc.unfreeze()
        guard.close()
    assert guard._on_gc not in gc.callbacks
