"""The class map: the one owner of class names, their values, colours, the nodata value, merged
labels and the order in which overlapping annotations are drawn.

A class's value in masks and predictions is its index in ``names``; :data:`NODATA` (255) marks
pixels that are not annotated (masks) or hold no imagery (predictions), and is the ignore index of
every loss and metric. Labels that are not classes can be *merged* into one (``{"roof":
"background"}`` for a canopy-only model): they are drawn with that class's value but never appear
among the names, so no raster, tag or legend lists them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from xml.sax.saxutils import escape

from ilots.core.errors import IlotsError

NODATA = 255
"""Not annotated (masks), no imagery (predictions), ignored by losses and metrics."""

# The sample city's classes (conf/config.yaml's defaults), for library calls made without a config.
DEFAULT_CLASSES: tuple[str, ...] = ("background", "tree", "water", "roof")
DEFAULT_PRIORITY: tuple[str, ...] = ("roof", "water", "tree")

RGBA = tuple[int, int, int, int]

# Colours of the class names users meet most, as QGIS and the figures show them.
KNOWN_COLOURS: dict[str, RGBA] = {
    "background": (220, 220, 210, 255),
    "tree": (34, 139, 34, 255),
    "water": (30, 110, 220, 255),
    "roof": (200, 50, 40, 255),
    "low_vegetation": (150, 200, 90, 255),
    "building": (200, 50, 40, 255),
    "road": (120, 120, 120, 255),
    "bare_soil": (190, 160, 110, 255),
}
# For other names, in order: distinct colours that read on a map (a qualitative palette).
PALETTE: tuple[RGBA, ...] = (
    (230, 159, 0, 255),
    (86, 180, 233, 255),
    (0, 158, 115, 255),
    (240, 228, 66, 255),
    (0, 114, 178, 255),
    (213, 94, 0, 255),
    (204, 121, 167, 255),
)
UNKNOWN_COLOUR: RGBA = (0, 0, 0, 255)


@dataclass(frozen=True)
class ClassMap:
    """Class names (index = value), merged labels and the draw priority of one project.

    Args:
        names: The classes, in value order.
        priority: Classes drawn in this order where annotated regions overlap (a later one wins);
            classes left out are drawn before them, merged labels first of all.
        merge: Labels that are not classes, drawn as the class they map to.
    """

    names: tuple[str, ...]
    priority: tuple[str, ...] = ()
    merge: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls,
        names: Sequence[str],
        priority: Sequence[str] = (),
        merge: Mapping[str, str] | None = None,
    ) -> ClassMap:
        """A checked class map from the ``classes``, ``labels.priority`` and ``labels.merge`` settings.

        Raises:
            IlotsError: names that are not a list, repeated or too many; a priority or merge naming
                an unknown class.
        """
        if isinstance(names, str) or isinstance(priority, str):
            raise IlotsError(
                "`classes` (conf/config.yaml) and `labels.priority` must be lists of class names."
            )
        names = [str(n) for n in names]
        if not names or len(names) >= NODATA:
            raise IlotsError(f"`classes` (conf/config.yaml) must list 1 to {NODATA - 1} class names.")
        if len(set(names)) != len(names):
            raise IlotsError(f"`classes` (conf/config.yaml) lists a class twice ({', '.join(names)}).")
        unknown = [p for p in priority if p not in names]
        if unknown:
            raise IlotsError(
                f"`labels.priority` names {', '.join(map(repr, unknown))}, not in `classes` "
                f"(conf/config.yaml) ({', '.join(names)}): fix one of them."
            )
        merge = {str(k): str(v) for k, v in (merge or {}).items()}
        for label, target in merge.items():
            if label in names or target not in names:
                raise IlotsError(
                    f"`labels.merge` maps {label!r} to {target!r}: map a label that is not a class to one "
                    f"of the classes ({', '.join(names)})."
                )
        return cls(tuple(names), tuple(str(p) for p in priority), merge)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nodata(self) -> int:
        return NODATA

    def value(self, name: str) -> int:
        """The value of a class or of a merged label."""
        return self.label_values[name]

    @cached_property
    def label_values(self) -> dict[str, int]:
        """Every label an annotation may use (merged labels first), with the value it is drawn as."""
        index = {name: value for value, name in enumerate(self.names)}
        return {**{label: index[target] for label, target in self.merge.items()}, **index}

    @cached_property
    def draw_order(self) -> list[str]:
        """Labels in the order they are drawn: merged labels, classes not in ``priority``, ``priority``."""
        listed = list(self.priority)
        return [label for label in self.label_values if label not in listed] + listed

    def tag(self) -> str:
        """The ``CLASSES`` tag of masks and predictions: the class names in value order."""
        return ",".join(self.names)

    def colour(self, value: int) -> RGBA:
        """The display colour of a class value (black for nodata and unknown values)."""
        if not 0 <= value < len(self.names):
            return UNKNOWN_COLOUR
        name = self.names[value]
        if name in KNOWN_COLOURS:
            return KNOWN_COLOURS[name]
        others = [n for n in self.names if n not in KNOWN_COLOURS]
        return PALETTE[others.index(name) % len(PALETTE)]

    def colour_table(self) -> dict[int, RGBA]:
        """A GDAL colour table of the class values."""
        return {value: self.colour(value) for value in range(len(self.names))}

    def rgb_lut(self) -> list[tuple[int, int, int]]:
        """256 RGB colours indexed by value (nodata and unknown values black), for pictures."""
        return [self.colour(value)[:3] for value in range(256)]

    def category_names_xml(self) -> str:
        """A GDAL PAM sidecar (``.aux.xml``) naming the class values: QGIS labels the legend with it."""
        names = [*self.names, *[""] * (NODATA - len(self.names)), "nodata"]
        items = "".join(f"<Category>{escape(n)}</Category>" for n in names)
        return (
            '<PAMDataset>\n  <PAMRasterBand band="1">\n'
            f"    <CategoryNames>{items}</CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n"
        )
