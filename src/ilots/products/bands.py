"""Which orthophoto band is red, green, blue and near infrared, for NDVI and the albedo proxy.

Band descriptions say it when the file carries them (``red``, ``green``, ``blue``, ``nir``, also
``R``/``G``/``B``/``PIR``/``IR``); otherwise the ``products.bands`` setting does (BD ORTHO IRC:
``{nir: 1, red: 2, green: 3}``), and without either a 4-band orthophoto is read as red, green, blue,
near infrared and a 3-band one as red, green, blue (no NDVI then).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ilots.core.errors import IlotsError

ROLES = ("red", "green", "blue", "nir")
_NAMES = {
    "red": "red",
    "r": "red",
    "rouge": "red",
    "green": "green",
    "g": "green",
    "vert": "green",
    "blue": "blue",
    "b": "blue",
    "bleu": "blue",
    "nir": "nir",
    "ir": "nir",
    "pir": "nir",
    "near infrared": "nir",
    "near-infrared": "nir",
    "infrared": "nir",
}


@dataclass(frozen=True)
class BandRoles:
    """1-based band index of each role present (None: absent), and the value of full brightness."""

    red: int | None
    green: int | None
    blue: int | None
    nir: int | None
    full: float

    @classmethod
    def of(cls, src: Any, setting: Mapping[str, Any] | None = None) -> BandRoles:
        """The roles of ``src``'s bands: the setting's, else the band descriptions', else by count.

        Raises:
            IlotsError: a setting with an unknown role or a band the orthophoto does not have.
        """
        roles: dict[str, int | None] = dict.fromkeys(ROLES)
        given = {k: v for k, v in (setting or {}).items() if v is not None}
        unknown = sorted(set(given) - set(ROLES))
        if unknown:
            raise IlotsError(f"products.bands has unknown role(s) {unknown}: use {', '.join(ROLES)}.")
        if given:
            for role, band in given.items():
                if not 1 <= int(band) <= src.count:
                    raise IlotsError(
                        f"products.bands.{role}={band} but {src.name} has {src.count} band(s): "
                        "fix the setting."
                    )
                roles[role] = int(band)
        else:
            for band, text in enumerate(src.descriptions, start=1):
                found = _NAMES.get((text or "").strip().lower())
                if found and roles[found] is None:
                    roles[found] = band
            if not any(roles.values()):
                count = src.count
                defaults = (1, 2, 3, 4) if count >= 4 else (1, 2, 3, None) if count == 3 else ()
                roles.update(dict(zip(ROLES, defaults, strict=False)))
        dtype = np.dtype(src.dtypes[0])
        full = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
        return cls(roles["red"], roles["green"], roles["blue"], roles["nir"], full)

    @property
    def visible(self) -> list[int]:
        return [b for b in (self.red, self.green, self.blue) if b is not None]

    @property
    def used(self) -> list[int]:
        """The bands the products read, in a fixed order (visible, then near infrared)."""
        return self.visible + ([self.nir] if self.nir is not None else [])

    def albedo(self, pixels: NDArray[Any]) -> NDArray[np.float64]:
        """Albedo proxy (0-1) of pixels given as (bands in ``used`` order, n).

        The mean of the visible bands weighted 0.55 and the near infrared 0.45 (the shares of
        sunlight's energy below and above 700 nm, roughly), each scaled by the full value of the
        data type; the visible mean alone without a near-infrared band. Digital numbers are not
        reflectances, so the proxy ranks roofs within one campaign, not across campaigns.
        """
        values = pixels.astype(np.float64) / self.full
        n_visible = len(self.visible)
        visible = values[:n_visible].mean(axis=0)
        if self.nir is None:
            return np.asarray(visible)
        return np.asarray(0.55 * visible + 0.45 * values[n_visible])

    def ndvi(self, pixels: NDArray[Any]) -> NDArray[np.float64] | None:
        """NDVI of pixels given as (bands in ``used`` order, ...), or None without red and near infrared."""
        if self.nir is None or self.red is None:
            return None
        red = pixels[self.visible.index(self.red)].astype(np.float64)
        nir = pixels[len(self.visible)].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(np.where(nir + red > 0, (nir - red) / (nir + red), 0.0))
