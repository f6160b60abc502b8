"""Process runtime shared by every service: settings, components, supervision and ordered shutdown."""

from legato.runtime.component import Component, ShutdownRequested
from legato.runtime.settings import Settings, SettingsError, load_settings
from legato.runtime.supervisor import Supervisor, install_signal_handlers

__all__ = [
    "Component",
    "Settings",
    "SettingsError",
    "ShutdownRequested",
    "Supervisor",
    "install_signal_handlers",
    "load_settings",
]
