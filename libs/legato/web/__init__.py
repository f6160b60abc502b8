"""``legato web``: the ops console — fleet, runs, live step graphs, signals and audited actions in a browser.

It talks to Legato only as a client does (``legato.client.LegatoClient`` over NATS, and the lifecycle
events): never to Postgres. Each logged-in person acts as their own keyring identity, so nats-server and
the trigger enforce their role and the audit trail records their name (docs/web.md).
"""
