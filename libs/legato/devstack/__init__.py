"""Embedded servers for `legato dev` and the test suite: a real nats-server and a real PostgreSQL."""

from legato.devstack.nats_server import EmbeddedNats, NatsCluster, find_nats_server
from legato.devstack.ports import free_port, port_is_free
from legato.devstack.postgres_server import EmbeddedPostgres, find_postgres_bin

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "NatsCluster",
    "find_nats_server",
    "find_postgres_bin",
    "free_port",
    "port_is_free",
]
