"""What every part of ilots shares: the class map, rasters and their valid pixels, the listing of
orthophotos, atomic file writes, project paths, and the one error type a user can cause.

Nothing here imports another ilots package: every other package may depend on ``ilots.core``.
"""

from ilots.core.classes import NODATA, ClassMap
from ilots.core.errors import IlotsError

__all__ = ["NODATA", "ClassMap", "IlotsError"]
