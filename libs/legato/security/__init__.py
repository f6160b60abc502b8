"""Identities, NATS permissions and signatures: who may do what on the bus, and proof of who did it.

- ``keys``: nkey (ed25519) seeds and public keys, signing and verifying;
- ``keyring``: a folder of per-identity seed files (mode 0600) and ``users.json`` (public keys, names,
  roles) — the one place services, the CLI and nats-server's configuration read identities from;
- ``permissions``: each role's subject permissions, rendered as nats-server ``authorization`` config;
- ``signing``: signed API requests (proven actor) and signed work items (proven origin).
"""

from legato.security.keyring import ROLES, Identity, Keyring, load_users
from legato.security.keys import KeyError_, Signer, Verifier

__all__ = ["ROLES", "Identity", "KeyError_", "Keyring", "Signer", "Verifier", "load_users"]
