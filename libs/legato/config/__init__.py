"""Where a process connects and how it behaves: ``Settings`` from flags, the environment (``LEGATO_*``)
and the state file ``legato dev`` writes. Below every other lib, so the bus, the client and the CLI
read the same settings without importing the service runtime."""

from legato.config.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
