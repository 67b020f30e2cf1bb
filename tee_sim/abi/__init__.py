"""The contract between the worlds (our ``ta/include``): ids, frames, chain blocks, digests, pairing.

Pure: no I/O. The normal world imports this package and nothing else from ``tee_sim``.
"""

from .ids import (CMD_PARAMS, TA_UUID, TA_VERSION, Cmd, Login, Origin, ParamType, Purpose, TeecResult,
                  param_types)
from .frame import Frame, FrameError, Kind, Value

__all__ = ["CMD_PARAMS", "TA_UUID", "TA_VERSION", "Cmd", "Login", "Origin", "ParamType", "Purpose",
           "TeecResult", "param_types", "Frame", "FrameError", "Kind", "Value"]
