"""A small upload is integrated on the server's event loop instead of in a worker thread when the
backend's commits are quick (``ServerSession._integrates_inline``: the fsync costs little, as
on tmpfs) and the backend is free; a large one, or a slow disk, still goes to a worker thread.
Same results either way: scenarios of other modules run here again with the loop path allowed
whatever the commits cost."""

from __future__ import annotations

import threading
import time

import pytest

from tests.e2e.test_bad_input import (  # noqa: F401 - run again here with the loop path forced
    env,
    test_a_write_to_another_partition_is_compensated_not_integrated,
    test_regression_a_batch_the_merge_core_refuses_gets_an_error_not_a_crash,
)
from tests.e2e.test_rules import (  # noqa: F401 - idem
    test_a_json_schema_violation_is_compensated_with_its_message,
    test_forbidden_uploads_are_compensated_and_named,
    world,
)
from tests.e2e.test_sync_lazy_skip import (  # noqa: F401 - idem
    test_an_idle_partition_skips_other_partitions_entries_and_still_gets_its_own,
)
from tests.helpers.servers import running_server, synced_db
from tests.models import Technician
from tidesync.server.enforcement import Enforcer
from tidesync.server.sync_endpoint import ServerSession

T = 20


@pytest.fixture(autouse=True)
def loop_path_whatever_it_costs(monkeypatch):
    monkeypatch.setattr(ServerSession, "INLINE_BELOW", float("inf"))


def _integrations(monkeypatch) -> list[tuple[int, bool]]:
    """(operations, in a worker thread) of every integration the server makes."""
    seen: list[tuple[int, bool]] = []
    integrate = Enforcer.integrate

    def spy(self, txns, peer, peer_seq, **kw):
        seen.append((sum(len(t.ops) for t in txns), threading.current_thread().name.startswith("asyncio_")))
        return integrate(self, txns, peer, peer_seq, **kw)

    monkeypatch.setattr(Enforcer, "integrate", spy)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("below", [float("inf"), 0.0])
def test_small_uploads_on_the_loop_large_ones_in_a_thread_same_results(tmp_path, monkeypatch, below):
    monkeypatch.setattr(ServerSession, "INLINE_BELOW", below)
    seen = _integrations(monkeypatch)
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p1")
        b = synced_db(tmp_path / "b.db", server.url, [Technician], partition="p1")
        try:
            for i in range(5):
                with a.write():
                    a.create(Technician, _id=f"t{i}", name="small")
                a.sync_session.wait_for_upload_completion(timeout=T)
            with a.write():
                for i in range(40):
                    a.create(Technician, _id=f"big{i}", name="large")
            a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)   # b holds t0 before it edits it
            with b.write():
                b.get(Technician, "t0").name = "from b"
            b.sync_session.wait_for_upload_completion(timeout=T)
            a.sync_session.wait_for_download_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            deadline = time.monotonic() + T
            while len(b.objects(Technician)) < 45 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert sorted(t._id for t in a.objects(Technician)) == sorted(t._id for t in b.objects(Technician))
            assert len(a.objects(Technician)) == 45
            assert a.get(Technician, "t0").name == "from b"
        finally:
            a.close()
            b.close()
    small = [threaded for ops, threaded in seen if 0 < ops <= ServerSession.INLINE_INTEGRATION]
    large = [threaded for ops, threaded in seen if ops > ServerSession.INLINE_INTEGRATION]
    assert small and large and all(large)
    if below == 0.0:
        assert all(small)
    else:
        assert not all(small)  # on the loop (unless the backend was busy at that moment)


def test_the_uploaders_ack_leaves_from_the_receive_hook_after_the_others_are_woken(tmp_path, monkeypatch):
    """An upload integrated on the loop is answered where it was received
    (``ServerSession._finish_inline``): nothing is left for the session's task, the other
    device gets the write, the uploader's upload completes, and the checkpoint-only echo
    still reaches the uploader afterwards (its download completes)."""
    finished: list[tuple[list[object], list[bytes], bool]] = []
    order: list[str] = []
    finish = ServerSession._finish_inline
    announce = ServerSession._announce

    def spy_finish(self, started, actions, payloads):
        rest = finish(self, started, actions, payloads)
        finished.append((list(rest), list(payloads), self._parked))
        order.append("answered")
        return rest

    def spy_announce(self, result, compensated):
        order.append("woken")
        return announce(self, result, compensated)

    monkeypatch.setattr(ServerSession, "_finish_inline", spy_finish)
    monkeypatch.setattr(ServerSession, "_announce", spy_announce)
    with running_server(tmp_path / "server") as server:
        a = synced_db(tmp_path / "a.db", server.url, [Technician], partition="p1")
        b = synced_db(tmp_path / "b.db", server.url, [Technician], partition="p1")
        try:
            for i in range(5):
                with a.write():
                    a.create(Technician, _id=f"t{i}", name=f"n{i}")
                a.sync_session.wait_for_upload_completion(timeout=T)
            b.sync_session.wait_for_download_completion(timeout=T)
            a.sync_session.wait_for_download_completion(timeout=T)
            assert sorted(t.name for t in b.objects(Technician)) == [f"n{i}" for i in range(5)]
        finally:
            a.close()
            b.close()
    assert finished, "no small upload was answered from the receive hook"
    assert all(rest == [] and payloads == [] and parked for rest, payloads, parked in finished)
    # Each answer follows its own wake-up. (Not only the first pair: the first upload may be
    # integrated in a worker thread, woken without an answer from the hook, when the file's
    # first commits were slow.)
    assert all(i > 0 and order[i - 1] == "woken" for i, step in enumerate(order) if step == "answered"), order
