"""What an image costs in input tokens, by its provider's own formula.

An image's tokens do not follow from its bytes: OpenAI bills 512-px tiles (gpt-4o-mini
2,833 + 5,667 per tile) or 32-px patches, Anthropic its pixels / 750 after a resize,
Gemini 258 per crop unit. When the image is inline (a base64 data URL or block), its
dimensions are read from its header and the formula applied; when they cannot be known
(a URL, an unreadable header) the rule's largest possible cost is used. Rules are data
(``model_limits.toml``); this module only computes.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any

import imagesize

#: Formats every provider accepts; anything else is bounded as unknown.
IMAGE_FORMATS = ("image/png", "image/jpeg", "image/gif", "image/webp")
#: Largest side a header may claim before it is treated as unreadable (providers refuse
#: such images; the rule's maximum still bounds them).
MAX_SIDE_PX = 1 << 20


@dataclass(frozen=True, slots=True)
class ImageRule:
    """One provider's image formula, with its parameters from the data file."""

    name: str
    kind: str  # "tiles" | "patches" | "pixels" | "gemini" | "max"
    source: str
    base: int = 0
    per_tile: int = 0
    fit_px: int = 0
    short_px: int = 0
    tile_px: int = 512
    patch_px: int = 32
    max_patches: int = 0
    multiplier: Decimal = Decimal(1)
    divisor: int = 750
    max_long_px: int = 0
    max_pixels: int = 0
    small_px: int = 0
    per_unit: int = 0
    min_unit_px: int = 0
    max_unit_px: int = 0
    #: A fixed per-image ceiling (Gemini 3's media resolution), 0 for none.
    cap_tokens: int = 0
    #: For kind "max": the rules whose largest answer is taken (an unknown model).
    of: tuple[ImageRule, ...] = ()

    def tokens(self, width: int, height: int, detail: str | None = None) -> int:
        """Upper bound on what an image of ``width`` x ``height`` pixels costs."""
        if self.kind == "max":
            return max(r.tokens(width, height, detail) for r in self.of)
        if self.cap_tokens:
            return self.cap_tokens
        if self.kind == "tiles":
            return self._tiles(width, height, detail)
        if self.kind == "patches":
            return self._patches(width, height)
        if self.kind == "pixels":
            return self._pixels(width, height)
        if self.kind == "gemini":
            return self._gemini(width, height)
        raise ValueError(f"unknown image rule kind {self.kind!r}")

    def max_tokens(self, detail: str | None = None) -> int:
        """What one image costs at most when its size cannot be known (a URL)."""
        return _max_tokens(self, detail)

    def _max_tokens(self, detail: str | None) -> int:
        if self.kind == "max":
            return max(r.max_tokens(detail) for r in self.of)
        if self.cap_tokens:
            return self.cap_tokens
        if self.kind == "tiles":
            # Fit in fit_px, shortest side at most short_px: fit_px x short_px at worst.
            return self._tiles(self.fit_px, self.short_px, detail)
        if self.kind == "patches":
            return _ceil(self.max_patches * self.multiplier)
        if self.kind == "pixels":
            return _ceil(Fraction(self.max_pixels, self.divisor))
        if self.kind == "gemini":
            return max(self._gemini(self.fit_px, s) for s in range(1, self.fit_px + 1))
        raise ValueError(f"unknown image rule kind {self.kind!r}")

    def _tiles(self, width: int, height: int, detail: str | None) -> int:
        if detail == "low":
            return self.base
        w, h = Fraction(width), Fraction(height)
        if max(w, h) > self.fit_px:
            scale = Fraction(self.fit_px) / max(w, h)
            w, h = w * scale, h * scale
        if min(w, h) > self.short_px:
            scale = Fraction(self.short_px) / min(w, h)
            w, h = w * scale, h * scale
        # A resize yields whole pixels: however the provider rounds, at most the ceiling.
        tiles = _ceil(Fraction(_ceil(w), self.tile_px)) * _ceil(Fraction(_ceil(h), self.tile_px))
        return self.base + self.per_tile * tiles

    def _patches(self, width: int, height: int) -> int:
        raw = _ceil(Fraction(width, self.patch_px)) * _ceil(Fraction(height, self.patch_px))
        # Scaling down to fit max_patches never covers more patches than before.
        return _ceil(min(raw, self.max_patches) * self.multiplier)

    def _pixels(self, width: int, height: int) -> int:
        pixels = Fraction(width * height)
        if self.max_long_px and max(width, height) > self.max_long_px:
            pixels *= Fraction(self.max_long_px, max(width, height)) ** 2
        if self.max_pixels:
            pixels = min(pixels, Fraction(self.max_pixels))
        return _ceil(pixels / self.divisor)

    def _gemini(self, width: int, height: int) -> int:
        if width <= self.small_px and height <= self.small_px:
            return self.per_unit
        unit = min(max(math.floor(Fraction(min(width, height)) / Fraction(3, 2)), self.min_unit_px),
                   self.max_unit_px)  # fmt: skip
        return self.per_unit * _ceil(Fraction(width, unit)) * _ceil(Fraction(height, unit))


@lru_cache(maxsize=256)
def _max_tokens(rule: ImageRule, detail: str | None) -> int:
    return rule._max_tokens(detail)


def _ceil(value: Fraction | Decimal | int) -> int:
    return math.ceil(value)


def data_url_dimensions(url: str) -> tuple[int, int] | None:
    """The pixel size of a ``data:image/...;base64,`` URL's image, None when unknown."""
    if not url.startswith("data:"):
        return None
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    media_type = header[5:].split(";", 1)[0].strip().lower()
    return base64_dimensions(payload, media_type)


def base64_dimensions(payload: Any, media_type: Any = None) -> tuple[int, int] | None:
    """The pixel size of base64 image data (an Anthropic ``source``), None when unknown.

    Unknown is the safe answer: the caller then bounds the image at the rule's maximum.
    """
    if not isinstance(payload, str):
        return None
    if isinstance(media_type, str) and media_type and media_type.lower() not in IMAGE_FORMATS:
        return None
    try:
        raw = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        return None
    try:
        width, height = imagesize.get(io.BytesIO(raw))
    except Exception:  # a malformed header from a client: unknown, never a crash
        return None
    if not (0 < width <= MAX_SIDE_PX and 0 < height <= MAX_SIDE_PX):
        return None
    return int(width), int(height)
