"""The throwaway PostgreSQL cluster helper (orchestrator/pg_cluster.py): found, refused, run."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import psycopg
import pytest

from sagalab.orchestrator import pg_cluster
from sagalab.orchestrator.pg_cluster import ClusterError, PgCluster, find_bindir


def test_no_server_binaries_is_an_error_that_says_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pg_cluster.shutil, "which", lambda _name: None)
    monkeypatch.setattr(pg_cluster.glob, "glob", lambda _pattern: [])
    with pytest.raises(ClusterError, match="apt-get install postgresql"):
        find_bindir()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_a_directory_the_postgres_user_cannot_reach_is_refused_before_initdb() -> None:
    private = Path(tempfile.mkdtemp(prefix="sagalab-private-"))  # 0700, root's
    try:
        with pytest.raises(ClusterError, match="cannot reach"):
            PgCluster(private / "cluster").start()
        assert not (private / "cluster" / "data").exists()
    finally:
        shutil.rmtree(private)


def test_a_cluster_starts_answers_restarts_and_stops() -> None:
    directory = Path(tempfile.mkdtemp(prefix="sagalab-pg-"))
    directory.chmod(0o711)
    cluster = PgCluster(directory / "cluster")
    try:
        url = cluster.start()
        assert url == f"postgresql://sagalab@127.0.0.1:{cluster.port}/postgres"
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        cluster.restart_crash()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
        cluster.stop()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
    finally:
        cluster.stop()
        shutil.rmtree(directory)


def test_a_free_port_taken_before_the_server_binds_it_is_swapped_for_another() -> None:
    """The port is picked when the cluster is made and bound seconds later, after initdb:
    with several test workers starting clusters and servers at once, another process can
    get it first (a bind, or an outgoing connection's ephemeral port), and then every
    PostgreSQL test of that worker failed."""
    directory = Path(tempfile.mkdtemp(prefix="sagalab-pg-"))
    directory.chmod(0o711)
    cluster = PgCluster(directory / "cluster")
    taken = cluster.port
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        url = cluster.start()
        assert cluster.port != taken
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        squatter.close()
        cluster.stop()
        shutil.rmtree(directory)
