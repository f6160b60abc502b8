"""``python -m legato.security``: make identities and the nats-server configuration that enforces them.

python -m legato.security init KEYS_DIR [NAME:ROLE ...]   # seeds (0600) + users.json; keeps existing
python -m legato.security nats-config KEYS_DIR/users.json # prints the authorization block
"""

from __future__ import annotations

import argparse
import sys

from legato.security.keyring import DEFAULT_IDENTITIES, ROLES, Keyring, load_users
from legato.security.keys import KeyError_
from legato.security.permissions import authorization_block


def main(argv: list[str] | None = None) -> int:
    """``python -m legato.security``: ``init`` a keys folder, or print ``nats-config`` for a users file."""
    parser = argparse.ArgumentParser(prog="python -m legato.security", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create missing identities in a keys folder")
    init.add_argument("folder")
    init.add_argument(
        "identities",
        nargs="*",
        metavar="NAME:ROLE",
        help=f"extra identities (roles: {', '.join(ROLES)}); the services and one user per API role "
        "are always created",
    )
    conf = sub.add_parser("nats-config", help="print nats-server's authorization block for a users.json")
    conf.add_argument("users")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            extra: list[tuple[str, str]] = []
            for item in args.identities:
                name, sep, role = item.partition(":")
                if not sep or role not in ROLES:
                    print(f"{item}: expected NAME:ROLE with ROLE one of {', '.join(ROLES)}", file=sys.stderr)
                    return 2
                extra.append((name, role))
            ring = Keyring(args.folder).ensure((*DEFAULT_IDENTITIES, *extra))
            print(f"identities in {ring.folder}: {', '.join(u.name for u in ring.users())}")
        else:
            print(authorization_block(load_users(args.users)))
    except KeyError_ as exc:
        print(f"legato.security: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
