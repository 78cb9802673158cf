"""The NLCD land-cover legend: class codes, names and the official colours. Data only, so that the
stages and pictures that use it depend on nothing else (their code versions follow their imports)."""

from __future__ import annotations

__all__ = ["NLCD_CLASSES", "NLCD_COLORMAP"]

# The 15 NLCD classes of the source deck (code -> name).
NLCD_CLASSES: dict[int, str] = {
    11: "Open Water",
    21: "Developed, Open Space",
    22: "Developed, Low Intensity",
    23: "Developed, Medium Intensity",
    24: "Developed, High Intensity",
    31: "Barren Land (Rock/Sand/Clay)",
    41: "Deciduous Forest",
    42: "Evergreen Forest",
    43: "Mixed Forest",
    52: "Shrub/Scrub",
    71: "Grassland/Herbaceous",
    81: "Pasture/Hay",
    82: "Cultivated Crops",
    90: "Woody Wetlands",
    95: "Emergent Herbaceous Wetlands",
}

NLCD_COLORMAP: dict[int, tuple[int, int, int, int]] = {  # the official NLCD legend
    11: (70, 107, 159, 255), 21: (222, 197, 197, 255), 22: (217, 146, 130, 255),
    23: (235, 0, 0, 255), 24: (171, 0, 0, 255), 31: (179, 172, 159, 255),
    41: (104, 171, 95, 255), 42: (28, 95, 44, 255), 43: (181, 197, 143, 255),
    52: (204, 184, 121, 255), 71: (223, 223, 194, 255), 81: (220, 217, 57, 255),
    82: (171, 108, 40, 255), 90: (184, 217, 235, 255), 95: (108, 159, 184, 255),
}
