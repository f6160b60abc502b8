"""What runs a service process: ``ServiceHost`` (NATS, optional Postgres, outbox relay, dead letters,
metrics and health endpoints) and ``run_service``, the entry point every ``python -m legato.<svc>`` uses.
The components it runs are in ``legato.lifecycle``, its settings in ``legato.config``."""
