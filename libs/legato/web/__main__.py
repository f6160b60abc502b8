"""``legato web`` (also ``python -m legato.web``): serve the console, or make a login token.

legato web [--listen HOST:PORT] [--keys DIR] [--tokens FILE] [--jaeger-url URL]
legato web token NAME [--keys DIR] [--tokens FILE]     # prints a login token (and URL) for NAME
legato web passwd NAME [--keys DIR] [--tokens FILE]    # sets NAME's password (scrypt in the tokens file)
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from legato.config.settings import SettingsError, load_settings
from legato.security.keys import KeyError_
from legato.web.config import WebConfig, WebConfigError, parse_listen
from legato.web.logins import LoginError, Logins, add_token, set_password


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``legato web`` (each also read from a ``LEGATO_WEB_*`` variable)."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="legato web", description="the Legato ops console (a web UI)")
    p.add_argument("--nats-url", help="NATS server (default: LEGATO_NATS_URL, then .legato/dev.json)")
    p.add_argument("--namespace", help="Legato namespace on that NATS (LEGATO_NAMESPACE)")
    p.add_argument(
        "--listen", default=env("LEGATO_WEB_LISTEN", "127.0.0.1:8765"), help="HOST:PORT to serve on"
    )
    p.add_argument(
        "--keys",
        default=env("LEGATO_WEB_KEYS"),
        help="keyring folder: users.json and the seeds of the identities people log in as "
        "(LEGATO_WEB_KEYS; default: the folder of LEGATO_AUTH_USERS)",
    )
    p.add_argument(
        "--tokens", default=env("LEGATO_WEB_TOKENS"), help="login tokens file (default KEYS/web-tokens.json)"
    )
    p.add_argument(
        "--jaeger-url", default=env("LEGATO_WEB_JAEGER_URL", ""), help="Jaeger UI, for trace links"
    )
    p.add_argument(
        "--session-secret-file",
        default=env("LEGATO_WEB_SESSION_SECRET_FILE"),
        help="file with the key that signs session cookies (default: random; sessions end on restart)",
    )
    p.add_argument(
        "--insecure-cookies",
        action="store_true",
        default=env("LEGATO_WEB_INSECURE_COOKIES") == "1",
        help="send the session cookie over plain http too (only behind a TLS-terminating proxy you trust)",
    )
    sub = p.add_subparsers(dest="command")
    token = sub.add_parser("token", help="create a login token for a keyring identity and print it")
    token.add_argument("name")
    passwd = sub.add_parser(
        "passwd", help="set the password of a keyring identity (asked twice; read from stdin when piped)"
    )
    passwd.add_argument("name")
    return p


def config_from(args: argparse.Namespace) -> WebConfig:
    """The console's configuration from parsed flags, the environment and ``.legato/dev.json``."""
    overrides = {k: v for k, v in (("nats_url", args.nats_url), ("namespace", args.namespace)) if v}
    settings = load_settings(overrides=overrides)
    keys = args.keys or (str(Path(settings.auth_users).parent) if settings.auth_users else "")
    if not keys:
        raise WebConfigError(
            "no keyring: give --keys DIR (or LEGATO_WEB_KEYS) with users.json and the seeds of the "
            "identities people log in as (python -m legato.security init DIR alice:operator)"
        )
    keys_dir = Path(keys)
    if not (keys_dir / "users.json").is_file():
        raise WebConfigError(
            f"--keys {keys_dir}: no users.json in it (python -m legato.security init {keys_dir})"
        )
    host, port = parse_listen(args.listen)
    secret = ""
    if args.session_secret_file:
        try:
            secret = Path(args.session_secret_file).read_text().strip()
        except OSError as exc:
            raise WebConfigError(
                f"--session-secret-file {args.session_secret_file}: {exc.strerror}"
            ) from None
        if len(secret) < 32:
            raise WebConfigError(
                f"--session-secret-file {args.session_secret_file}: needs at least 32 characters"
            )
    return WebConfig(
        settings=settings,
        keys_dir=keys_dir,
        tokens_file=Path(args.tokens) if args.tokens else keys_dir / "web-tokens.json",
        host=host,
        port=port,
        jaeger_url=args.jaeger_url,
        session_secret=secret,
        secure_cookies=not args.insecure_cookies,
    )


def read_password() -> str:
    """A new password: typed twice at a terminal, or the first line of stdin when piped."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        raise LoginError("the two passwords differ")
    return first


def main(argv: list[str] | None = None) -> int:
    """Serve the console until SIGTERM/Ctrl-C (or make a token); the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from(args)
        if args.command in ("token", "passwd"):
            if Logins(config.tokens_file, config.users_file, config.keys_dir).identity(args.name) is None:
                print(
                    f"legato web: {args.name!r} is not an identity of {config.users_file} with role viewer, "
                    f"operator or admin whose seed is in {config.keys_dir}",
                    file=sys.stderr,
                )
                return 2
            if args.command == "passwd":
                set_password(config.tokens_file, args.name, read_password())
                print(f"password of {args.name} set in {config.tokens_file}")
                return 0
            token = add_token(config.tokens_file, args.name)
            print(f"login token for {args.name}: {token}\nlogin URL: {config.base_url}/login?token={token}")
            return 0
    except (SettingsError, WebConfigError, LoginError, KeyError_) as exc:
        print(f"legato web: {exc}", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from legato.web.app import create_app
    except ImportError as exc:
        print(
            f"legato web: the web extra is not installed ({exc.name}): pip install 'legato[web]'",
            file=sys.stderr,
        )
        return 2
    print(f"legato web: serving on {config.base_url} (NATS {config.settings.nats_url})", flush=True)
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level="warning",
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
