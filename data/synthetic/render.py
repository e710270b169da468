"""The "moving shapes" world: palettes, clip parameters, frame rendering and captions.

One clip = a solid background colour and one coloured shape moving in a straight line at
constant speed (left, right, up or down), fully inside the frame the whole time. Constant speed
and no other motion cue are deliberate: played backwards, a "moves left" clip is a plausible
"moves right" clip, so a model that ignores frame order (mean pooling) cannot tell left from
right, while a temporal model can.

Everything here is a pure function of its arguments (no global random state), so the dataset
is the same whichever process renders which clip.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

import cv2
import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "DIRECTIONS",
    "SHAPES",
    "ClipSpec",
    "all_combos",
    "canonical_caption",
    "make_clip_spec",
    "paraphrases",
    "render_clip",
    "reversed_spec",
    "with_cutaway",
]

#: Shape colours, RGB. Names are plain colour words CLIP knows.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 220, 0),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "purple": (140, 50, 180),
    "pink": (255, 110, 180),
    "white": (245, 245, 245),
}
#: Background colours, RGB. A name shared with COLORS has the same value, and that pair is
#: skipped (a white shape on a white background is invisible).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "blue": (30, 70, 220),
    "green": (30, 170, 50),
    "brown": (120, 75, 35),
}
SHAPES = ("circle", "square", "triangle", "cross")
#: Unit motion vector (dx, dy) in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

_DIR_PHRASE = {"left": "to the left", "right": "to the right", "up": "upward", "down": "downward"}
_PARAPHRASES = (
    "{ac} {c} {s} is moving {dp} over {ab} {b} background",
    "on {ab} {b} background {ac} {c} {s} goes {d}",
    "{ac} {c} {s} slides {dp} across {ab} {b} background",
    "{ab} {b} background with {ac} {c} {s} moving {d}",
    "{ac} {c} {s} travels {dp} in front of {ab} {b} background",
    "the {c} {s} heads {dp} on {ab} {b} background",
    "{ac} {c} {s} drifting {dp} against {ab} {b} background",
    "there is {ac} {c} {s} moving {d} on {ab} {b} backdrop",
)
#: Shape side as a fraction of the frame side, and travel as a fraction of the free room.
# Side 15-19 px at the demo's 32 px input: smaller shapes left circle/square and cross/triangle
# (similar areas) a few pixels apart, and the from-scratch demo model confused them (v5: 0.30-0.42;
# v6: 0.42-0.55 still cost some seeds of the demo 10-15% of test queries in shape errors).
_SIZE_RANGE = (0.48, 0.60)
_TRAVEL_RANGE = (0.45, 0.85)
_MARGIN = 1.5  # pixels kept free at the border, so anti-aliased edges never reach it
_SHIFT = 4  # fractional bits for cv2 drawing coordinates
_SUPERSAMPLE = 4  # shapes are drawn at 4x resolution and box-filtered down


def _a(word: str) -> str:
    """English indefinite article for ``word`` ("an orange", "a red")."""
    return "an" if word[0] in "aeiou" else "a"


def all_combos() -> list[tuple[str, str, str, str]]:
    """Every valid (colour, shape, background, direction), in a fixed order (720 by default)."""
    return [
        (c, s, b, d)
        for c, s, b, d in itertools.product(COLORS, SHAPES, BACKGROUNDS, DIRECTIONS)
        if COLORS[c] != BACKGROUNDS[b]
    ]


def canonical_caption(color: str, shape: str, background: str, direction: str) -> str:
    """The caption used for val/test: ``a red circle moves left on a blue background``."""
    return f"{_a(color)} {color} {shape} moves {direction} on {_a(background)} {background} background"


def paraphrases(color: str, shape: str, background: str, direction: str) -> list[str]:
    """All paraphrase captions of a combo (canonical one excluded), fixed order."""
    return [
        t.format(c=color, s=shape, b=background, d=direction, dp=_DIR_PHRASE[direction], ac=_a(color), ab=_a(background))
        for t in _PARAPHRASES
    ]


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip. Positions are shape centres in pixels (float).

    start, end: centre at the first and last frame; half_size: half the shape's side (px);
    num_frames: frames in the clip; width, height: frame size (px).
    """

    color: str
    shape: str
    background: str
    direction: str
    half_size: float
    start: tuple[float, float]
    end: tuple[float, float]
    num_frames: int
    width: int
    height: int

    def to_dict(self) -> dict:
        # The fields hold only str, numbers and tuples of floats: a shallow dict equals
        # dataclasses.asdict's deep copy, at a fraction of its cost (called per clip).
        return {f.name: getattr(self, f.name) for f in fields(self)}


def make_clip_spec(
    combo: tuple[str, str, str, str], rng: np.random.Generator, width: int, height: int, num_frames: int
) -> ClipSpec:
    """Random instance of a combo: shape size, travel distance (speed) and start point.

    The start is drawn so the whole shape stays inside the frame for the entire clip.
    """
    color, shape, background, direction = combo
    side = min(width, height) * rng.uniform(*_SIZE_RANGE)
    r = side / 2
    dx, dy = DIRECTIONS[direction]
    lo_x, hi_x = _MARGIN + r, width - 1 - _MARGIN - r
    lo_y, hi_y = _MARGIN + r, height - 1 - _MARGIN - r
    along_room = (hi_x - lo_x) if dx else (hi_y - lo_y)
    travel = along_room * rng.uniform(*_TRAVEL_RANGE)
    # Coordinate along the motion: start anywhere that leaves room for ``travel``.
    if dx:
        x0 = rng.uniform(lo_x + travel, hi_x) if dx < 0 else rng.uniform(lo_x, hi_x - travel)
        y0 = rng.uniform(lo_y, hi_y)
    else:
        y0 = rng.uniform(lo_y + travel, hi_y) if dy < 0 else rng.uniform(lo_y, hi_y - travel)
        x0 = rng.uniform(lo_x, hi_x)
    start = (float(x0), float(y0))
    end = (float(x0 + dx * travel), float(y0 + dy * travel))
    return ClipSpec(color, shape, background, direction, float(r), start, end, num_frames, width, height)


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def reversed_spec(spec: ClipSpec) -> ClipSpec:
    """The same clip played backwards: start and end swapped, opposite direction. Its frames
    are exactly the original's in reverse order (motion is linear)."""
    d = spec.to_dict()
    d.update(start=spec.end, end=spec.start, direction=OPPOSITE[spec.direction])
    return ClipSpec(**d)


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Vertices (float [N, 2], x/y pixels) of a polygonal shape inside the box centre +- r."""
    if shape == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif shape == "triangle":
        pts = [(0, -r), (r, r), (-r, r)]
    elif shape == "cross":
        a = r / 3  # arm half-thickness: arms are a third of the side
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}; expected one of {SHAPES}")
    return np.array(pts, dtype=np.float64) + (cx, cy)


def _coverage(shape: str, cx: float, cy: float, r: float, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """Anti-aliased coverage of the shape: (alpha uint8 [h, w] patch, top, left) within the frame.

    Drawn at ``_SUPERSAMPLE`` x resolution in a patch around the shape and box-averaged down
    (INTER_AREA), so the coverage follows sub-pixel positions in both axes. (cv2's own LINE_AA
    does not anti-alias the horizontal edges of filled polygons: vertical motion would advance
    in whole-pixel jumps.)
    """
    ss = _SUPERSAMPLE
    left, top = max(int(np.floor(cx - r)) - 2, 0), max(int(np.floor(cy - r)) - 2, 0)
    right, bottom = min(int(np.ceil(cx + r)) + 3, width), min(int(np.ceil(cy + r)) + 3, height)
    big = np.zeros(((bottom - top) * ss, (right - left) * ss), dtype=np.uint8)
    # A small-pixel coordinate x (pixel i spans i-0.5..i+0.5) maps to (x - left + 0.5) * ss - 0.5.
    bx, by, br = (cx - left + 0.5) * ss - 0.5, (cy - top + 0.5) * ss - 0.5, r * ss
    scale = 1 << _SHIFT
    if shape == "circle":
        cv2.circle(big, (int(round(bx * scale)), int(round(by * scale))), int(round(br * scale)), 255, -1, cv2.LINE_8, _SHIFT)
    else:
        poly = np.round(_shape_polygon(shape, bx, by, br) * scale).astype(np.int32)
        cv2.fillPoly(big, [poly], 255, cv2.LINE_8, _SHIFT)
    alpha = cv2.resize(big, (right - left, bottom - top), interpolation=cv2.INTER_AREA)
    return alpha, top, left


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Frames of a clip: uint8 [num_frames, height, width, 3], BGR (what cv2.VideoWriter wants)."""
    bg = np.array(BACKGROUNDS[spec.background][::-1], dtype=np.float32)
    fg = np.array(COLORS[spec.color][::-1], dtype=np.float32)
    frames = np.empty((spec.num_frames, spec.height, spec.width, 3), dtype=np.uint8)
    frames[:] = bg.astype(np.uint8)
    steps = max(spec.num_frames - 1, 1)
    for t in range(spec.num_frames):
        # Constant speed: linear interpolation between start and end.
        cx = spec.start[0] + (spec.end[0] - spec.start[0]) * t / steps
        cy = spec.start[1] + (spec.end[1] - spec.start[1]) * t / steps
        alpha, top, left = _coverage(spec.shape, cx, cy, spec.half_size, spec.width, spec.height)
        a = alpha[..., None].astype(np.float32) / 255.0
        h, w = alpha.shape
        frames[t, top : top + h, left : left + w] = np.round(bg + a * (fg - bg)).astype(np.uint8)
    return frames


def with_cutaway(frames: np.ndarray, cut: int, background: str) -> np.ndarray:
    """A clip that opens with a static shot of plain ``background`` and cuts to ``frames`` at frame
    ``cut``: frames [0, cut) replaced. BGR uint8 [T, H, W, 3] in and out (a new array)."""
    if not 0 <= cut <= len(frames):
        raise ValueError(f"cut frame {cut} outside the clip's {len(frames)} frames")
    out = frames.copy()
    out[:cut] = np.array(BACKGROUNDS[background][::-1], dtype=np.uint8)
    return out
