"""QR signatures in the mask topology (the paper's scheme V2, without the reference code's defects).

A QR code is written into one layer's kernel-connectivity map: a light module keeps its kernel
connected, a dark module removes the kernel. The payload is a MAC of the owner and ticket under the
server secret, so a decoded code proves who registered the ticket. The layer and offset are chosen
where the ticket's map already matches the code best, and the total number of kept weights is left
exactly unchanged. Reading crops the same window from a suspect's map, counts matching data modules
against a permutation null, and decodes the window with zxing-cpp.

segno (encoding) and zxing-cpp (decoding) are imported where they are used, so `verifier` stays
importable with torch, numpy, scipy and networkx alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import numpy as np
import torch

from verifier.align import Alignment
from verifier.errors import VerifierError
from verifier.masks import Mask, connectivity_map, count_kept
from verifier.topology import sequential_null

PAYLOAD_PREFIX = "TG1:"
ERROR_LEVELS = ("L", "M", "Q", "H")
MAX_VERSION = 6  # versions 7+ carry version-information blocks this module does not lay out
_ALIGNMENT_CENTRE = {2: 18, 3: 22, 4: 26, 5: 30, 6: 34}


def _derive(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose, so the server secret never MACs two kinds of message directly."""
    return hmac.new(secret, f"ticketguard/{purpose}".encode(), hashlib.sha256).digest()


def make_payload(secret: bytes, owner_id: str, ticket_id: str) -> str:
    """`TG1:` + 24 base32 characters of a MAC of owner|ticket under a key derived from the secret:
    fits version 3-H."""
    digest = hmac.new(_derive(secret, "qr-payload"), f"{owner_id}|{ticket_id}".encode(), hashlib.sha256).digest()
    return PAYLOAD_PREFIX + base64.b32encode(digest[:15]).decode()


def whitening_key(secret: bytes, ticket_id: str) -> bytes:
    """The key that hides one ticket's code in its mask (see `whiten`)."""
    return hmac.new(_derive(secret, "qr-whitening"), ticket_id.encode(), hashlib.sha256).digest()


def whiten(code: QrCode, key: bytes) -> QrCode:
    """The code with its data modules XORed with a keystream (SHA-256 in counter mode under `key`).

    This is what is written into the mask: without the key the window looks like noise, so nobody
    holding the published ticket can find the code by trying to decode every offset (and then erase
    it on purpose). XOR is its own inverse: `whiten(whiten(code, key), key)` is `code` again."""
    count = int(code.data.sum())
    stream = b"".join(hashlib.sha256(key + i.to_bytes(4, "big")).digest() for i in range((count + 255) // 256))
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:count].astype(bool)
    flips = np.zeros_like(code.dark)
    flips[code.data] = bits
    return QrCode(payload=code.payload, version=code.version, error=code.error, dark=code.dark ^ flips)


def payload_is_valid(secret: bytes, owner_id: str, ticket_id: str, payload: str) -> bool:
    """True when `payload` is the MAC this secret gives for this owner and ticket."""
    return hmac.compare_digest(make_payload(secret, owner_id, ticket_id), payload)


def function_patterns(version: int) -> np.ndarray:
    """Boolean (n, n) map of the modules that carry no data: finders and separators, timing,
    alignment, format information and the dark module (ISO/IEC 18004, versions 1 to 6)."""
    if not 1 <= version <= MAX_VERSION:
        raise VerifierError(f"QR version must be 1 to {MAX_VERSION}, not {version}", code="invalid_signature")
    n = 17 + 4 * version
    fixed = np.zeros((n, n), dtype=bool)
    fixed[:9, :9] = True  # top-left finder, separator and format information
    fixed[:9, n - 8:] = True  # top-right finder and separator; format row 8
    fixed[n - 8:, :9] = True  # bottom-left finder and separator; format column 8, dark module
    fixed[6, :] = fixed[:, 6] = True  # timing patterns
    if version in _ALIGNMENT_CENTRE:
        c = _ALIGNMENT_CENTRE[version]
        fixed[c - 2:c + 3, c - 2:c + 3] = True
    return fixed


@dataclass(frozen=True)
class QrCode:
    """A QR symbol as booleans: `dark[i, j]` True where module (i, j) is dark."""

    payload: str
    version: int
    error: str
    dark: np.ndarray

    @property
    def size(self) -> int:
        return self.dark.shape[0]

    @property
    def data(self) -> np.ndarray:
        """Modules that carry data and error correction (the ones the module test counts)."""
        return ~function_patterns(self.version)

    @property
    def connected(self) -> np.ndarray:
        """The connectivity the code asks for: a light module is a connected kernel."""
        return ~self.dark


def make_code(payload: str, *, version: int = 3, error: str = "H") -> QrCode:
    """Encode `payload` at exactly this version and error-correction level (segno)."""
    import segno

    error = error.upper()
    if error not in ERROR_LEVELS:
        raise VerifierError(f"QR error level must be one of {', '.join(ERROR_LEVELS)}", code="invalid_signature")
    function_patterns(version)  # validates the version
    try:
        symbol = segno.make_qr(payload, version=version, error=error, boost_error=False)
    except segno.DataOverflowError as exc:
        raise VerifierError(f"payload does not fit a version {version}-{error} QR code: {exc}",
                            code="invalid_signature") from None
    dark = np.array(symbol.matrix, dtype=np.uint8).astype(bool)
    return QrCode(payload=payload, version=version, error=error, dark=dark)


def code_from_matrix(payload: str, version: int, error: str, dark: list[list[int]] | np.ndarray) -> QrCode:
    """Rebuild a stored code (its matrix is kept in the credential, so no re-encoding is needed)."""
    matrix = np.asarray(dark, dtype=bool)
    if matrix.shape != (17 + 4 * version,) * 2:
        raise VerifierError("stored QR matrix does not match its version", code="invalid_signature")
    return QrCode(payload=payload, version=version, error=error, dark=matrix)


@dataclass(frozen=True)
class Placement:
    """Where a code sits: layer, top-left offset in its connectivity map, and how well the ticket's
    own map matched the code's data modules there before anything was written."""

    layer: str
    row: int
    col: int
    matched: int
    data_modules: int


def eligible_layers(mask: Mask, size: int) -> list[str]:
    """Prunable layers whose connectivity map is at least `size` on both sides."""
    return [name for name, keep in mask.items()
            if keep.dim() in (2, 4) and keep.shape[0] >= size and keep.shape[1] >= size]


def _match_counts(map_: torch.Tensor, code: QrCode) -> torch.Tensor:
    """matched[r, c] = data modules of the code that the map agrees with at offset (r, c)."""
    data = torch.from_numpy(code.data).double()
    want = torch.from_numpy(code.connected).double()
    on = torch.nn.functional.conv2d(map_.double()[None, None], (data * want)[None, None])[0, 0]
    off = torch.nn.functional.conv2d(1 - map_.double()[None, None], (data * (1 - want))[None, None])[0, 0]
    return (on + off).round().long()


def choose_placement(mask: Mask, code: QrCode, *, layers: list[str] | None = None) -> Placement:
    """The layer (of `layers`, default all) and offset whose map already matches the code's data modules
    best (ties: first layer in mask order, then the smallest row, then column)."""
    allowed = set(mask if layers is None else layers)
    layers = [name for name in eligible_layers(mask, code.size) if name in allowed]
    if not layers:
        raise VerifierError(f"no prunable layer has a connectivity map of at least {code.size}x{code.size}",
                            code="no_eligible_layer")
    best: Placement | None = None
    for name in layers:
        counts = _match_counts(connectivity_map(mask[name]), code)
        flat = int(counts.argmax())
        row, col = divmod(flat, counts.shape[1])
        matched = int(counts[row, col])
        if best is None or matched > best.matched:
            best = Placement(name, row, col, matched, int(code.data.sum()))
    assert best is not None
    return best


@dataclass(frozen=True)
class Embedding:
    """What writing a code changed: kernels connected and removed in the window, weights moved to
    keep the total count, and the window's data-module agreement afterwards (should be all)."""

    mask: Mask
    state: dict[str, torch.Tensor]
    kernels_connected: int
    kernels_removed: int
    weights_added: int
    weights_removed: int
    rebalanced_added: int
    rebalanced_removed: int


def embed_code(mask: Mask, state: dict[str, torch.Tensor], rewind: dict[str, torch.Tensor], code: QrCode,
               placement: Placement, *, keep_function_patterns: bool = True) -> Embedding:
    """Write `code` into the mask at `placement`; the total number of kept weights is unchanged.

    Dark module: every weight of its kernel is pruned. Light module on an empty kernel: the kernel's
    largest-magnitude rewind weight is turned on (with its rewind value in `state`). The difference is
    then rebalanced with the smallest-magnitude changes that never go against the code: pruning the
    smallest kept weights, or reviving the pruned weights with the largest rewind magnitude, outside
    the window or inside kernels the code keeps (never emptying one). With `keep_function_patterns`,
    finder, timing, alignment and format modules are left as the ticket had them (they are redrawn
    when the window is read), so the code does not show in the map.
    """
    name = placement.layer
    keep = {k: v.clone().bool() for k, v in mask.items()}
    weights = {k: v.clone() for k, v in state.items()}
    before = count_kept(keep)
    layer, conv = keep[name], keep[name].dim() == 4
    written = np.ones_like(code.dark) if not keep_function_patterns else code.data
    light = written & code.connected
    kernels_connected = kernels_removed = weights_added = weights_removed = 0
    for i, j in zip(*np.nonzero(written), strict=True):
        r, c = int(i) + placement.row, int(j) + placement.col
        on, connected = bool(light[i, j]), bool(layer[r, c].any())
        if on and not connected:
            index = int(rewind[name][r, c].abs().flatten().argmax()) if conv else None
            cell = (r, c, *np.unravel_index(index, layer.shape[2:])) if conv else (r, c)
            layer[cell] = True
            weights[name][cell] = rewind[name][cell]
            kernels_connected += 1
            weights_added += 1
        elif not on and connected:
            weights_removed += int(layer[r, c].sum())
            layer[r, c] = False
            weights[name][r, c] = 0
            kernels_removed += 1
    window = (slice(placement.row, placement.row + code.size), slice(placement.col, placement.col + code.size))
    open_kernels = torch.zeros(layer.shape[:2], dtype=torch.bool)  # window kernels the code keeps on
    open_kernels[window] = torch.from_numpy(light)
    in_window = torch.zeros(layer.shape[:2], dtype=torch.bool)
    in_window[window] = True
    frozen = {k: torch.zeros_like(v) for k, v in keep.items()}
    # a linear "kernel" is one weight: the whole window is frozen; a conv kernel the code keeps may
    # give up weights to the rebalancing as long as one stays (the guard below)
    frozen[name] = _per_weight(in_window & ~open_kernels if conv else in_window, layer)
    deficit = before - count_kept(keep)
    added = removed = 0
    if deficit > 0:
        added = _revive_largest(keep, weights, rewind, deficit, frozen)
    elif deficit < 0:
        guard = (name, _per_weight(open_kernels, layer)) if conv else None
        removed = _prune_smallest(keep, weights, -deficit, frozen, guard)
    if count_kept(keep) != before:
        raise VerifierError("no room to keep the number of kept weights unchanged", code="embedding_failed")
    return Embedding(keep, weights, kernels_connected, kernels_removed, weights_added, weights_removed,
                     added, removed)


def _per_weight(kernels: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
    """Broadcast an (out, in) kernel map to the layer's weight shape."""
    return kernels.view(*kernels.shape, *([1] * (layer.dim() - 2))).expand_as(layer).clone()


def _flat_scores(keep: Mask, pick) -> tuple[list[str], torch.Tensor, np.ndarray]:
    names = list(keep)
    scores = torch.cat([pick(n).float().flatten() for n in names])
    return names, scores, np.cumsum([0, *[keep[n].numel() for n in names]])


def _locate(names: list[str], offsets: np.ndarray, index: int) -> tuple[str, int]:
    layer_index = int(np.searchsorted(offsets, index, side="right") - 1)
    return names[layer_index], index - int(offsets[layer_index])


def _revive_largest(keep: Mask, weights: dict[str, torch.Tensor], rewind: dict[str, torch.Tensor], count: int,
                    frozen: Mask) -> int:
    """Turn on the `count` pruned, unfrozen weights with the largest rewind magnitude."""
    names, scores, offsets = _flat_scores(
        keep, lambda n: torch.where(~keep[n] & ~frozen[n], rewind[n].abs().float(), torch.tensor(-1.0)))
    order = torch.argsort(scores, descending=True, stable=True)[:count]
    if len(order) < count or bool((scores[order] < 0).any()):
        raise VerifierError("no room to keep the number of kept weights unchanged", code="embedding_failed")
    for index in order.tolist():
        n, local = _locate(names, offsets, index)
        keep[n].view(-1)[local] = True
        weights[n].view(-1)[local] = rewind[n].view(-1)[local]
    return count


def _prune_smallest(keep: Mask, weights: dict[str, torch.Tensor], count: int, frozen: Mask,
                    guard: tuple[str, torch.Tensor] | None) -> int:
    """Prune the `count` kept, unfrozen weights of smallest magnitude; inside `guard`'s kernels (the
    window's light ones) the last kept weight of a kernel stays."""
    names, scores, offsets = _flat_scores(
        keep, lambda n: torch.where(keep[n] & ~frozen[n], weights[n].abs().float(), torch.tensor(float("inf"))))
    removed = 0
    for index in torch.argsort(scores, stable=True).tolist():
        if removed == count or not bool(torch.isfinite(scores[index])):
            break
        n, local = _locate(names, offsets, index)
        if guard is not None and n == guard[0] and bool(guard[1].view(-1)[local]):
            o, i = np.unravel_index(local, keep[n].shape)[:2]
            if int(keep[n][o, i].sum()) <= 1:
                continue
        keep[n].view(-1)[local] = False
        weights[n].view(-1)[local] = 0
        removed += 1
    return removed


def layer_map(mask: Mask, placement: Placement, alignment: Alignment | None = None) -> np.ndarray:
    """The suspect's connectivity map of the signature layer, in the ticket's channel order when an
    `alignment` (from `verifier.align.align_layer`) is given; a VerifierError without the layer."""
    if placement.layer not in mask:
        raise VerifierError(f"the suspect has no layer {placement.layer!r}", code="invalid_model")
    map_ = connectivity_map(mask[placement.layer]).numpy()
    return map_[alignment.rows][:, alignment.cols] if alignment is not None else map_


def read_window(mask: Mask, code: QrCode, placement: Placement, alignment: Alignment | None = None) -> np.ndarray:
    """The suspect's connectivity in the code's window (True = connected); a VerifierError when the
    suspect lacks the layer or the layer is too small."""
    map_ = layer_map(mask, placement, alignment)
    window = map_[placement.row:placement.row + code.size, placement.col:placement.col + code.size]
    if window.shape != code.dark.shape:
        raise VerifierError(f"layer {placement.layer!r} is too small for the signature window", code="invalid_model")
    return window


@dataclass(frozen=True)
class ModuleTest:
    """Data modules of the window that agree with the code, against a row/column permutation null."""

    matched: int
    data_modules: int
    p_value: float  # the permutation p: never below 1/(1 + permutations)
    z: float  # (matched - null mean) / null sd, for reading; no p is taken from it
    null_mean: float
    null_std: float
    permutations: int  # drawn: the null stops early once it is clearly unremarkable

    @property
    def agreement(self) -> float:
        return self.matched / self.data_modules


def module_test(mask: Mask, code: QrCode, placement: Placement, *, alignment: Alignment | None = None,
                permute_rows: bool = True, permute_cols: bool = True, permutations: int = 9999,
                seed: int = 0) -> ModuleTest:
    """Count the window's data modules that match the code; p-value against windows cut from random
    row and column permutations of the suspect's own map, which keeps its density and per-channel
    structure. An axis whose order means the same in every network (input pixels, class outputs) is
    not permuted (`permute_rows`/`permute_cols` False), so structure shared by all tickets there
    (pixels that are always blank) is in the null too. The p-value is the (sequential) permutation p,
    never below 1/(1 + permutations): no tail bound is tight enough here (a swapped row moves up to a
    whole row of modules), so a verdict that needs less must draw more permutations."""
    window = read_window(mask, code, placement, alignment)
    data, want = code.data, code.connected
    observed = int(((window == want) & data).sum())
    full = layer_map(mask, placement, alignment)
    rng = np.random.default_rng(seed)
    n = code.size

    def pick(count: int, size: int, start: int, permute: bool) -> np.ndarray:
        if not permute:
            return np.broadcast_to(np.arange(start, start + n), (count, n))
        return np.argsort(rng.random((count, size)), axis=1)[:, :n]

    def draw(count: int) -> np.ndarray:
        rows = pick(count, full.shape[0], placement.row, permute_rows)
        cols = pick(count, full.shape[1], placement.col, permute_cols)
        windows = full[rows[:, :, None], cols[:, None, :]]
        return ((windows == want) & data).sum(axis=(1, 2))

    null, p_value = sequential_null(draw, observed, permutations)
    mean, std = float(null.mean()), float(null.std(ddof=1)) if len(null) > 1 else 0.0
    z = (observed - mean) / std if std > 0 else (0.0 if observed == mean else float("inf"))
    return ModuleTest(observed, int(data.sum()), p_value, float(z), mean, std, len(null))


def render_window(window: np.ndarray, code: QrCode, *, scale: int = 4, quiet: int = 4) -> np.ndarray:
    """Grayscale image of the window read as a QR symbol: connected = light; the function patterns are
    redrawn from the code (they may have been kept from the ticket's map); a quiet zone is added."""
    dark = ~window.astype(bool)
    fixed = function_patterns(code.version)
    dark = np.where(fixed, code.dark, dark)
    pixels = np.pad(np.where(dark, 0, 255).astype(np.uint8), quiet, constant_values=255)
    return np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))


def decode_window(window: np.ndarray, code: QrCode) -> str | None:
    """Decode the window with zxing-cpp; the payload text, or None when it does not decode."""
    import zxingcpp

    image = render_window(window, code)
    found = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode, is_pure=True,
                                   try_rotate=False, try_invert=False)
    valid = [barcode.text for barcode in found if barcode.valid and barcode.text]
    return valid[0] if valid else None
