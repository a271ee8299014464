"""The read/write split on a real streaming replica (`--read-db`, issue 10).

A module-wide PostgreSQL primary and a hot standby made from it with `pg_basebackup -R`. To
show where a read goes, WAL replay is paused on the replica: a saga submitted then is on the
primary only. The read-only commands given `--read-db` do not see it (they read the replica)
until replay resumes; the API's list does not either, while its GET of that saga falls back
to the primary (a client's GET right after its POST finds its saga). Everything is stopped
and removed at the end, whatever happened.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from apilab import admin_api, cli
from pglab import drop_database, new_database, replay, start_replica
from workerlab import enqueue, order, sagalab, wait_for

from sagalab.fakeservices import RunningServices
from sagalab.orchestrator.errors import SagaError
from sagalab.orchestrator.pg_cluster import PgCluster
from sagalab.orchestrator.stores import open_store


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[PgCluster, PgCluster]]:
    """A primary and its streaming replica, both stopped and removed after the module."""
    directory = Path(tempfile.mkdtemp(prefix="sagalab-replica-"))
    directory.chmod(0o711)  # the servers' user may pass through (see conftest's pg_cluster)
    primary = PgCluster(directory / "primary")
    replica: PgCluster | None = None
    try:
        primary.start()
        replica = start_replica(primary, directory / "replica")
        yield primary, replica
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _on_replica(replica_url: str) -> list[str]:
    """The ids of the sagas the replica serves (none while it has no saga schema yet)."""
    try:
        with closing(open_store(replica_url, readonly=True)) as store:
            return [r.id for r in store.list_sagas(limit=500)]
    except SagaError:
        return []


@pytest.fixture
def split(clusters: tuple[PgCluster, PgCluster]) -> Iterator[tuple[str, str, str]]:
    """(primary URL, replica URL, id of a saga both serve) of a fresh database; replay is
    resumed and the database dropped after the test."""
    primary, replica = clusters
    url = new_database(primary)
    replica_url = replica.url_for(url.rsplit("/", 1)[1])
    try:
        (first,) = enqueue(url, [order(1)])
        wait_for(lambda: first in _on_replica(replica_url), 10, "the replica to replay a saga")
        yield url, replica_url, first
    finally:
        replay(replica, paused=False)
        drop_database(primary, url)


def _listed(*args: str) -> list[str]:
    code, out, err = cli("orchestrate", "list", "--json", *args)
    assert code == 0, err
    return [row["id"] for row in json.loads(out)]


def test_read_only_commands_read_the_replica_and_see_its_lag(
    clusters: tuple[PgCluster, PgCluster],
    split: tuple[str, str, str],
    services: RunningServices,
) -> None:
    _, replica = clusters
    url, replica_url, first = split
    replay(replica, paused=True)
    (late,) = enqueue(url, [order(2)])  # on the primary only while replay is paused

    # The primary has both; every read-only command given --read-db reads the replica.
    assert set(_listed("--db", url)) == {first, late}
    assert _listed("--db", url, "--read-db", replica_url) == [first]
    code, _, err = cli("orchestrate", "status", late, "--db", url, "--read-db", replica_url)
    assert code == 3, err  # unknown there, for now
    code, out, err = cli(
        "orchestrate", "status", first, "--json", "--db", url, "--read-db", replica_url
    )
    assert code == 0 and json.loads(out)["id"] == first, err
    code, _, err = cli("orchestrate", "events", late, "--db", url, "--read-db", replica_url)
    assert code == 3, err
    code, out, err = cli("breakers", "list", "--json", "--db", url, "--read-db", replica_url)
    assert code == 0 and json.loads(out) == [], err
    # verify too, and SAGALAB_READ_DB does what --read-db does.
    env = {**services.env, "SAGALAB_DB": url, "SAGALAB_READ_DB": replica_url}
    verified = sagalab("verify", late, env=env)
    assert verified.returncode == 3, verified.stderr

    replay(replica, paused=False)
    wait_for(
        lambda: set(_listed("--db", url, "--read-db", replica_url)) == {first, late},
        10,
        "the replica to catch up once replay resumes",
    )
    code, out, err = cli(
        "orchestrate", "status", late, "--json", "--db", url, "--read-db", replica_url
    )
    assert code == 0 and json.loads(out)["status"] == "pending", err


def test_the_api_reads_the_replica_and_finds_a_saga_just_posted_on_the_primary(
    clusters: tuple[PgCluster, PgCluster], split: tuple[str, str, str], tmp_path: Path
) -> None:
    _, replica = clusters
    url, replica_url, first = split
    with admin_api(url, keys_db=tmp_path / "keys.db", read_db=replica_url) as client:
        assert client.get("/readyz").status_code == 200
        replay(replica, paused=True)
        posted = client.post("/v1/sagas", json={"flow": "checkout", "input": order(3)})
        assert posted.status_code == 202, posted.text
        late = posted.json()["id"]

        # The list is served by the replica: the new saga is not there yet (documented lag).
        listed = client.get("/v1/sagas").json()["items"]
        assert [s["id"] for s in listed] == [first]
        # A GET of that saga falls back to the primary instead of a 404.
        shown = client.get(f"/v1/sagas/{late}")
        assert shown.status_code == 200, shown.text
        assert shown.json()["id"] == late and shown.json()["status"] == "pending"
        # An id neither has is still a 404.
        assert client.get("/v1/sagas/no-such-saga").status_code == 404

        replay(replica, paused=False)
        wait_for(
            lambda: {s["id"] for s in client.get("/v1/sagas").json()["items"]} == {first, late},
            10,
            "the replica to serve the posted saga once replay resumes",
        )
