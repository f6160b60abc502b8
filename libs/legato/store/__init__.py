"""PostgreSQL: pool, migrations, the transactional outbox and its relay, dedup keys, dead letters."""

from legato.store.dead_letters import PostgresDeadLetters
from legato.store.dedup import forget_applied_before, mark_applied, mark_applied_many
from legato.store.migrations import MigrationError, migrate, migrate_url
from legato.store.outbox import OutboxRelay, add_to_outbox
from legato.store.pool import create_pool, ensure_database, redact
from legato.store.transactions import run_transaction

__all__ = [
    "MigrationError",
    "OutboxRelay",
    "PostgresDeadLetters",
    "add_to_outbox",
    "create_pool",
    "ensure_database",
    "forget_applied_before",
    "mark_applied",
    "mark_applied_many",
    "migrate",
    "migrate_url",
    "redact",
    "run_transaction",
]
