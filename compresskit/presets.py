"""The Preset base class: a named, plugin-provided set of compression groups.

A preset is data: an ordered tuple of *group* mappings in exactly the form a config file uses under
``[[steps.groups]]`` (keys ``name``, ``types``, ``names``, ``exclude``, ``decomposition``, ``options``,
``overrides``). ``preset = "kroneckerbert21"`` in a strategy expands to these groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from compresskit.component import Component


class Preset(Component):
    """Base class of presets (registered through ``compresskit_register_presets``)."""

    #: The groups, in config-file form; applied in order, first match wins for a module.
    groups: ClassVar[tuple[Mapping[str, Any], ...]] = ()
