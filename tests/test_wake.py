"""Wake-ups (orchestrator/wake.py): a queued saga wakes an idle worker at once, on SQLite and
PostgreSQL, and polling stays the truth when a wake-up is lost.

Workers here poll every 30 s: a saga finished within 10 s was woken for, not polled for.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from workerlab import Workers, enqueue, order, sagalab, statuses, wait_for

from sagalab.orchestrator import wake
from sagalab.orchestrator.stores import open_store
from sagalab.orchestrator.wake import MAX_SOCKETS, notify_dir, sqlite_waker, wake_dir

SLOW_POLL = ("--concurrency", "2", "--poll", "30")


def sockets(db: Path) -> list[Path]:
    directory = wake_dir(db)
    return sorted(directory.glob("*.sock")) if directory.exists() else []


def done(db: Path | str, n: int) -> bool:
    return statuses(db).get("completed", 0) >= n


def second_saga_woken(db: Path | str) -> float:
    """Queue one saga, let it finish, then queue another while the worker is idle; return
    how long the second took (a worker polling every 30 s would take up to 30)."""
    enqueue(db, [order(1)])
    wait_for(lambda: done(db, 1), 20, "the first saga")
    started = time.monotonic()
    enqueue(db, [order(2)])
    wait_for(lambda: done(db, 2), 10, "the second saga, woken for", every=0.01)
    return time.monotonic() - started


def test_a_saga_queued_wakes_an_idle_sqlite_worker_at_once(db: Path, workers: Workers) -> None:
    worker = workers.start(*SLOW_POLL)
    wait_for(lambda: sockets(db), 20, "the worker's wake-up socket")
    assert second_saga_woken(db) < 5
    assert worker.alive()


def test_orchestrate_run_queued_wakes_the_worker(
    db: Path, workers: Workers, env: Path, tmp_path: Path
) -> None:
    workers.start(*SLOW_POLL)
    wait_for(lambda: sockets(db), 20, "the worker's wake-up socket")
    enqueue(db, [order(1)])
    wait_for(lambda: done(db, 1), 20, "the first saga")
    payload = tmp_path / "order.json"
    payload.write_text(json.dumps(order(9)))
    started = time.monotonic()
    result = sagalab("orchestrate", "run", "checkout", "--input", f"@{payload}", "--db", str(db))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: done(db, 2), 10, "the saga `orchestrate run` queued", every=0.01)
    assert time.monotonic() - started < 8  # the CLI's own start-up included


def test_a_saga_queued_wakes_an_idle_postgres_worker_at_once(
    pg_url: str, services: object, tmp_path: Path
) -> None:
    workers = Workers(pg_url, services.env, tmp_path / "logs")  # type: ignore[attr-defined]
    try:
        workers.start(*SLOW_POLL)
        open_store(pg_url).close()  # the schema, before enqueue races the worker
        enqueue(pg_url, [order(1)])
        wait_for(lambda: done(pg_url, 1), 20, "the first saga")
        assert second_saga_woken_after_listen(pg_url) < 5
    finally:
        workers.stop_all()


def second_saga_woken_after_listen(url: str) -> float:
    started = time.monotonic()
    enqueue(url, [order(2)])
    wait_for(lambda: done(url, 2), 10, "the second saga, woken for", every=0.01)
    return time.monotonic() - started


def test_without_wake_ups_polling_still_finds_the_saga(
    db: Path, services: object, tmp_path: Path
) -> None:
    workers = Workers(db, {**services.env, "SAGALAB_NO_WAKE": "1"}, tmp_path / "l")  # type: ignore[attr-defined]
    try:
        workers.start("--concurrency", "1", "--poll", "0.3")
        enqueue(db, [order(1), order(2)])
        wait_for(lambda: done(db, 2), 20, "both sagas, by polling")
        assert not wake_dir(db).exists()  # no channel made at all
    finally:
        workers.stop_all()


def test_a_deleted_wake_directory_costs_one_poll_not_the_saga(db: Path, workers: Workers) -> None:
    workers.start("--concurrency", "1", "--poll", "1")
    wait_for(lambda: sockets(db), 20, "the worker's wake-up socket")
    shutil.rmtree(wake_dir(db))
    enqueue(db, [order(1)])  # nobody to wake: the writer does not fail
    wait_for(lambda: done(db, 1), 20, "the saga, by polling")


def test_a_killed_workers_stale_socket_is_removed_and_does_not_break_writers(
    db: Path, workers: Workers
) -> None:
    victim = workers.start(*SLOW_POLL)
    wait_for(lambda: sockets(db), 20, "the worker's wake-up socket")
    stale = sockets(db)
    victim.kill()
    assert sockets(db) == stale  # SIGKILL left its socket behind
    workers.start(*SLOW_POLL)
    wait_for(lambda: len(sockets(db)) == 2, 20, "the new worker's socket")
    assert second_saga_woken(db) < 5  # the writer woke the live one past the dead one
    # A wake-up goes to one process picked at random, so the dead socket is met (and its file
    # removed) the first time a writer picks it: within 30 more sagas but for odds of 2**-30.
    for n in range(3, 33):
        if not any(p.exists() for p in stale):
            break
        enqueue(db, [order(n)])
        wait_for(lambda n=n: done(db, n), 20, f"saga {n}")
    assert not any(p.exists() for p in stale)  # the dead one's file removed


def test_a_clean_exit_leaves_no_wake_up_files(db: Path, workers: Workers) -> None:
    worker = workers.start("--concurrency", "1", "--poll", "0.05", "--exit-when-idle", "0.3")
    enqueue(db, [order(1)])
    wait_for(lambda: not worker.alive(), 20, "the worker to exit when idle")
    assert worker.proc.returncode == 0, worker.stderr()
    assert not wake_dir(db).exists()


def dead_sockets(directory: Path, n: int) -> None:
    """`n` socket files nobody listens on (as SIGKILLed workers leave them)."""
    directory.mkdir(exist_ok=True)
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(str(directory / f"{i}-dead.sock"))
        s.close()


def test_a_directory_full_of_dead_sockets_neither_fails_nor_slows_a_submission(
    db: Path,
) -> None:
    directory = wake_dir(db)
    dead_sockets(directory, 3 * MAX_SOCKETS)
    store = open_store(db)
    try:
        started = time.monotonic()
        for i in range(4):  # each submission tries at most MAX_SOCKETS, removing the dead
            enqueue(db, [order(i)])
        took = time.monotonic() - started
    finally:
        store.close()
    assert statuses(db) == {"pending": 4}
    assert len(list(directory.glob("*.sock"))) == 0  # 3 x 64 dead ones gone in three writes
    assert took < 5  # bounded work per write (generous: the machine is shared)


def test_a_writer_tries_at_most_max_sockets_per_wake_up(tmp_path: Path) -> None:
    directory = tmp_path / "x.wake"
    dead_sockets(directory, MAX_SOCKETS + 10)
    assert notify_dir(directory) == 0
    assert len(list(directory.glob("*.sock"))) == 10  # the bound: the rest next time


def test_a_full_socket_buffer_never_blocks_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    waker = sqlite_waker(db)
    assert waker is not None
    try:
        waker._closed.set()  # its listener stops reading: the buffer fills up
        started = time.monotonic()
        for _ in range(5000):
            notify_dir(wake_dir(db))
        assert time.monotonic() - started < 10
    finally:
        waker._closed.clear()
        waker.close()
    assert not wake_dir(db).exists()


def test_a_waker_returns_on_a_wake_up_and_on_its_timeout(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    waker = sqlite_waker(db)
    assert waker is not None
    try:
        assert not waker.wait(0.05)  # nothing sent: the timeout
        notify_dir(wake_dir(db))
        started = time.monotonic()
        assert waker.wait(10)
        assert time.monotonic() - started < 5
        assert not waker.wait(0.05)  # one wake-up releases one wait
    finally:
        waker.close()


def test_a_database_in_a_deep_folder_still_wakes_its_workers(tmp_path: Path) -> None:
    # Beside the database a socket path would pass the kernel's 107 bytes (a test's or
    # validate's temporary folder): the channel goes to a short folder named after the
    # database instead, the same for every process (it was polling only, +100 ms a saga).
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    db = deep / "s.db"
    assert len(str(db.with_name("s.db.wake"))) + 24 > 107
    directory = wake_dir(db)
    assert len(str(directory)) + 24 <= 107 and directory == wake_dir(Path(str(db)))
    waker = sqlite_waker(db)
    assert waker is not None
    try:
        assert notify_dir(wake_dir(db)) == 1
        assert waker.wait(10)
    finally:
        waker.close()
    assert not directory.exists()
    other = tmp_path / ("e" * 100) / "s.db"
    assert wake_dir(other) != directory  # another database, another channel


def test_due_now_wakes_only_for_sagas_due_now() -> None:
    assert wake.due_now(time.time())
    assert not wake.due_now(None)  # off the queue
    assert not wake.due_now(time.time() + 60)  # a retry later: polling finds it


def test_no_wake_environment_disables_the_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGALAB_NO_WAKE", "1")
    assert not wake.enabled()
    monkeypatch.setenv("SAGALAB_NO_WAKE", "0")
    assert wake.enabled()


def test_a_wake_up_is_delivered_at_once_not_at_the_listeners_timeout(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    waker = sqlite_waker(db)
    assert waker is not None
    took = []
    try:
        for _ in range(9):
            started = time.monotonic()
            notify_dir(wake_dir(db))
            assert waker.wait(10)
            took.append(time.monotonic() - started)
    finally:
        waker.close()
    assert sorted(took)[4] < 0.25  # the median; the listener's own timeout is 0.5 s


def test_a_dropped_listen_connection_costs_a_poll_then_comes_back(
    pg_url: str, services: object, tmp_path: Path
) -> None:
    import psycopg

    workers = Workers(pg_url, services.env, tmp_path / "logs")  # type: ignore[attr-defined]

    def listeners() -> list[int]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%%' "
                "AND datname = current_database()"
            ).fetchall()
        return [r[0] for r in rows]

    try:
        workers.start("--concurrency", "1", "--poll", "1")
        [pid] = wait_for(listeners, 20, "the worker's LISTEN connection")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        enqueue(pg_url, [order(1)])  # its wake-up may be lost: polling finds the saga
        wait_for(lambda: done(pg_url, 1), 20, "the saga, by polling")
        wait_for(lambda: [p for p in listeners() if p != pid], 20, "a new LISTEN connection")
    finally:
        workers.stop_all()


class Busy:
    """A worker process's handler with every thread busy: counts the wake-ups it saw."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self) -> bool:
        self.seen += 1
        return False


def test_a_queued_saga_wakes_one_worker_process_not_all(tmp_path: Path) -> None:
    # Waking every process for every saga had each of them claim, all but one for nothing.
    db = tmp_path / "s.db"
    wakers = [sqlite_waker(db) for _ in range(3)]
    try:
        assert notify_dir(wake_dir(db)) == 1
        woken = [w.wait(0.5) for w in wakers if w is not None]
        assert woken.count(True) == 1
    finally:
        for w in wakers:
            if w is not None:
                w.close()


def test_a_process_with_no_idle_thread_passes_the_wake_up_on(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    idle = sqlite_waker(db)
    busy = [sqlite_waker(db) for _ in range(2)]
    handlers = [Busy(), Busy()]
    try:
        assert idle is not None
        for waker, handler in zip(busy, handlers, strict=True):
            assert waker is not None
            waker.attach(handler)
        for _ in range(6):  # whichever process the writer picks, the idle one gets it
            notify_dir(wake_dir(db))
            assert idle.wait(10)
        assert sum(h.seen for h in handlers) <= 12  # at most each busy one, once a wake-up
    finally:
        for w in [idle, *busy]:
            if w is not None:
                w.close()


def test_a_wake_up_nobody_takes_visits_each_process_once(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    wakers = [sqlite_waker(db) for _ in range(3)]
    handlers = [Busy(), Busy(), Busy()]
    try:
        for waker, handler in zip(wakers, handlers, strict=True):
            assert waker is not None
            waker.attach(handler)
        notify_dir(wake_dir(db))
        wait_for(lambda: sum(h.seen for h in handlers) >= 3, 10, "the wake-up to go round")
        time.sleep(0.3)  # room for a fourth visit, which must not come
        assert [h.seen for h in handlers] == [1, 1, 1]
    finally:
        for w in wakers:
            if w is not None:
                w.close()


def test_an_older_writers_broadcast_byte_is_taken_but_not_passed_on(tmp_path: Path) -> None:
    # Writers before one-process wake-ups sent "!" to every process: passing it on as well
    # would make each of those a chain of 33 wake-ups.
    db = tmp_path / "s.db"
    wakers = [sqlite_waker(db) for _ in range(2)]
    handlers = [Busy(), Busy()]
    try:
        for waker, handler in zip(wakers, handlers, strict=True):
            assert waker is not None
            waker.attach(handler)
        first = sockets(db)[0]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as old_writer:
            old_writer.sendto(b"!", str(first))
        wait_for(lambda: sum(h.seen for h in handlers) >= 1, 10, "the wake-up")
        time.sleep(0.3)  # room for a passed-on one, which must not come
        assert sum(h.seen for h in handlers) == 1
    finally:
        for w in wakers:
            if w is not None:
                w.close()
