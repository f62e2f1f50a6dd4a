"""Evidence pictures of a QR signature: the expected code, the window read from a suspect, and their
difference, as PNG bytes (written with zlib; no imaging library needed)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from verifier.signatures.qr import QrCode, render_window

AGREE_DARK, AGREE_LIGHT = (0, 0, 0), (255, 255, 255)
MISSING, EXTRA = (220, 40, 40), (40, 90, 220)  # code dark but suspect connected; code light but removed


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an (H, W) grayscale or (H, W, 3) RGB uint8 array as a PNG."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError("pixels must be uint8 of shape (H, W) or (H, W, 3)")
    height, width = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def expected_png(code: QrCode, *, scale: int = 8) -> bytes:
    """The code as it was embedded (dark = kernel removed)."""
    return png_bytes(render_window(code.connected, code, scale=scale))


def window_png(window: np.ndarray, code: QrCode, *, scale: int = 8) -> bytes:
    """The suspect's window read as a QR symbol (function patterns redrawn, as the decoder sees it)."""
    return png_bytes(render_window(window, code, scale=scale))


def difference_png(window: np.ndarray, code: QrCode, *, scale: int = 8, quiet: int = 4) -> bytes:
    """Agreeing data modules in black and white; red where the code wants a removed kernel and the
    suspect has it connected, blue where the code wants a connected kernel and the suspect removed it;
    function patterns grey."""
    want, got = code.connected, window.astype(bool)
    image = np.empty((*want.shape, 3), dtype=np.uint8)
    image[want & got] = AGREE_LIGHT
    image[~want & ~got] = AGREE_DARK
    image[~want & got] = MISSING
    image[want & ~got] = EXTRA
    image[~code.data] = 160
    image = np.pad(image, ((quiet, quiet), (quiet, quiet), (0, 0)), constant_values=255)
    return png_bytes(np.kron(image, np.ones((scale, scale, 1), dtype=np.uint8)))
