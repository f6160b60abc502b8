"""What the CLI tells a user when something outside it fails: one line, what was tried, what to do."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from legato.config.settings import dev_state_file, read_dev_state
from legato.core.errors import DefinitionError
from legato.flow.loading import WorkflowNotFound, is_reference, load_workflow


class CliError(Exception):
    """An error whose message is the whole story for the user (printed as ``legato: <message>``)."""


def nats_origin(args: argparse.Namespace) -> str:
    """Where the NATS URL came from, in the order settings resolve it: flag, env, dev.json, default."""
    if getattr(args, "nats_url", None):
        return "--nats-url"
    if os.environ.get("LEGATO_NATS_URL"):
        return "LEGATO_NATS_URL"
    state = dev_state_file(os.environ.get("LEGATO_STATE_DIR") or ".legato")
    if read_dev_state(state.parent).get("nats_url"):
        return str(state)
    return "the default (no --nats-url, LEGATO_NATS_URL or .legato/dev.json here)"


def unreachable(url: str, args: argparse.Namespace) -> CliError:
    """NATS did not answer: name the URL, where it came from and what to do."""
    origin = nats_origin(args)
    hint = "start the stack with `make run` (or `legato dev`) in the checkout"
    if origin.endswith("dev.json"):
        pid = read_dev_state(Path(origin).parent).get("pid")
        alive = isinstance(pid, int) and _alive(pid)
        if not alive:
            hint = f"the `legato dev` that wrote it (pid {pid}) is gone: start it again with `make run`"
    elif origin in ("--nats-url", "LEGATO_NATS_URL"):
        hint = f"check that a NATS server listens there, or fix {origin}"
    return CliError(f"cannot connect to NATS at {url} (from {origin}); {hint}")


def refused_credentials(url: str, args: argparse.Namespace, creds: str) -> CliError:
    """NATS answered but refused who we are: name the credentials used and where to find others."""
    who = f"the seed {creds}" if creds else "no credentials (no --creds, LEGATO_NATS_CREDS or dev.json seed)"
    return CliError(
        f"NATS at {url} (from {nats_origin(args)}) refused the connection with {who}: give the seed of an "
        "identity it knows with --creds FILE or LEGATO_NATS_CREDS (`legato dev` writes its own in .legato/keys/)"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_definition(path: Path) -> str:
    """A definition file's text, or a CliError saying why it cannot be read (missing, not UTF-8).

    A name that is no file but reads ``module:attr`` (``pkg.flows:daily``, ``flows/daily.py:flow``)
    names a :class:`legato.flow.Workflow`: its YAML is the definition (validated as a file's would be).
    """
    if not path.exists() and is_reference(str(path)):
        return workflow_text(str(path))
    if path.suffix == ".py":
        raise CliError(f"{path}: a Python file: name the Workflow in it, as {path}:flow (module:attr)")
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the definition as UTF-8"
        ) from None


def workflow_text(reference: str) -> str:
    """The YAML of the Workflow object ``module:attr`` names, or a CliError saying what is missing."""
    try:
        return load_workflow(reference).source_yaml()
    except WorkflowNotFound as exc:
        raise CliError(str(exc)) from None
    except DefinitionError as exc:  # a value YAML cannot hold (a set, an object), named by its path
        raise CliError(f"{reference}: " + "; ".join(str(issue) for issue in exc.errors)) from None
