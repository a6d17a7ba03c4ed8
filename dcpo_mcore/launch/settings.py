"""Launch errors and the launch settings' type (the `launch:` section of the config, config/launch.py)."""
from __future__ import annotations

from dcpo_mcore.config.launch import LaunchConfig as LaunchSettings
from dcpo_mcore.errors import UserError

__all__ = ["LaunchError", "LaunchSettings"]


class LaunchError(UserError, ValueError):
    """A launch setting or a Slurm environment that cannot work; the message is one line with the fix."""
