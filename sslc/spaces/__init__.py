"""What can be searched: knobs, ranges and the presets shipped as files."""

from .space import Knob, SearchSpace, SpaceError, preset_names

__all__ = ["Knob", "SearchSpace", "SpaceError", "preset_names"]
