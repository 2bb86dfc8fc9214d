from stream_worker.worker.batching import MicroBatcher


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_flush_is_due_at_the_size_bound():
    batcher = MicroBatcher(max_size=3, max_wait_s=10, clock=Clock())
    batcher.add(["a", "b"])
    assert not batcher.due()
    batcher.add(["c"])
    assert batcher.due()


def test_flush_is_due_at_the_deadline_of_the_oldest_change():
    clock = Clock()
    batcher = MicroBatcher(max_size=100, max_wait_s=0.05, clock=clock)
    assert not batcher.due()  # nothing waiting: never due
    batcher.add(["a"])
    clock.now += 0.04
    batcher.add(["b"])  # a later change does not move the deadline
    assert not batcher.due()
    clock.now += 0.011
    assert batcher.due()


def test_several_changes_of_one_user_coalesce_into_one_entry_in_first_change_order():
    batcher = MicroBatcher(max_size=2, max_wait_s=1, clock=Clock())
    batcher.add(["b", "a", "b", "c", "a"])
    assert len(batcher) == 3
    assert batcher.drain() == [["b", "a"], ["c"]]
    assert len(batcher) == 0 and not batcher.pending and not batcher.due()


def test_records_that_changed_no_user_still_make_a_flush_due_for_their_commit():
    clock = Clock()
    batcher = MicroBatcher(max_size=10, max_wait_s=0.1, clock=clock)
    batcher.note_pending()
    clock.now += 0.2
    assert batcher.due() and batcher.drain() == []


def test_a_flush_coalesces_up_to_max_size_users_and_scores_them_chunk_size_at_a_time():
    batcher = MicroBatcher(max_size=5, max_wait_s=1, chunk_size=2, clock=Clock())
    batcher.add(["a", "b", "a", "c", "d"])
    assert not batcher.due()  # 4 users wait: more may still coalesce
    batcher.add(["e"])
    assert batcher.due()
    assert batcher.drain() == [["a", "b"], ["c", "d"], ["e"]]
