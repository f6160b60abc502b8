"""The ground floor every long-lived thing stands on: ``Component`` (``run()`` and an idempotent
``shutdown()``) and ``Supervisor`` (one task group, ordered and bounded shutdown). It imports nothing
of Legato but logging, so the bus, the store and the services can all build on it."""

from legato.lifecycle.component import Component, ShutdownRequested
from legato.lifecycle.supervisor import Supervisor, install_signal_handlers

__all__ = ["Component", "ShutdownRequested", "Supervisor", "install_signal_handlers"]
