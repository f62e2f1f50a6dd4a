"""QR signatures in the service: written into a ticket by its registration job, read from a suspect
by a verification job. The science is `verifier.signatures`; this module adds the owner's MAC
payload, the stored credential and the evidence pictures."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.datasets.catalog import DatasetRef, load
from service.errors import APIError
from service.jobs.context import JobContext
from service.models import Signature
from verifier.errors import VerifierError
from verifier.masks import Mask
from verifier.models import build_model
from verifier.signatures.images import difference_png, expected_png, window_png
from verifier.signatures.qr import (
    Placement,
    QrCode,
    code_from_matrix,
    make_code,
    make_payload,
    payload_is_valid,
    whitening_key,
)
from verifier.signatures.signing import read_signature, sign_ticket
from verifier.tickets import load_ticket
from verifier.training import TrainConfig


@dataclass(frozen=True)
class SignatureRequest:
    """What the owner asked for at registration. `auto` is `qr` where a layer is large enough for the
    code, `fingerprint` otherwise; `fingerprint` and `none` leave the mask as it is (the topology test
    still compares it)."""

    kind: str = "auto"
    version: int = 3
    error: str = "H"
    keep_function_patterns: bool = True
    recovery_epochs: int = 2
    recovery_lr: float = 0.01


def check_qr_fits(version: int, error: str) -> None:
    """422 now, not a failed job later, when a payload cannot fit this QR version and level."""
    try:
        make_code(make_payload(b"probe", "owner", "ticket"), version=version, error=error)
    except VerifierError as exc:
        raise APIError(422, "invalid_signature", str(exc)) from None


@dataclass(frozen=True)
class SignedRegistration:
    weights: dict[str, torch.Tensor]
    mask: Mask
    credential: dict[str, Any]  # the Signature row's columns


def sign_registration(ctx: JobContext, *, request: SignatureRequest, owner_id: str, ticket_id: str, arch: str,
                      dataset: DatasetRef, weights: dict[str, torch.Tensor], mask: Mask,
                      rewind_sha256: str | None) -> SignedRegistration | None:
    """Write the owner's QR code into the ticket and recover its accuracy with the mask fixed.

    Returns None when `auto` finds no layer large enough. Revived weights start from the found
    ticket's rewind weights, or for an uploaded ticket from a fresh initialisation of the
    architecture seeded by the ticket id (an upload has no rewind weights).
    """
    code = make_code(make_payload(ctx.settings.secret(), owner_id, ticket_id), version=request.version,
                     error=request.error)
    seed = zlib.crc32(ticket_id.encode())
    if rewind_sha256 is not None:
        rewind = load_ticket(ctx.store.path(rewind_sha256)).rewind
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            rewind = build_model(arch, *dataset.spec).state_dict()
    ctx.progress(0.2, "writing the QR code and fine-tuning to recover accuracy", force=True)
    epochs = request.recovery_epochs

    def on_epoch(epoch: int, loss: float) -> None:
        ctx.progress(0.3 + 0.6 * (epoch + 1) / max(1, epochs),
                     f"recovery fine-tune: epoch {epoch + 1}/{epochs}, loss {loss:.4f}")

    try:
        signed = sign_ticket(arch, load(ctx.store, dataset), weights, mask, rewind, code,
                             key=whitening_key(ctx.settings.secret(), ticket_id),
                             keep_function_patterns=request.keep_function_patterns,
                             recovery=TrainConfig(epochs=epochs, lr=request.recovery_lr), seed=seed,
                             progress=on_epoch)
    except VerifierError:
        if request.kind == "auto":  # no layer large enough, no local copy of the data set, no room
            return None
        raise
    placement = signed.placement
    report = signed.report | {"rewind": "found ticket" if rewind_sha256 else "fresh initialisation"}
    credential = {"payload": code.payload, "version": code.version, "error_level": code.error,
                  "layer": placement.layer, "row": placement.row, "col": placement.col,
                  "matrix": ["".join("1" if v else "0" for v in row) for row in code.dark.tolist()],
                  "keep_function_patterns": request.keep_function_patterns, "report": report}
    return SignedRegistration(signed.weights, signed.mask, credential)


def code_of(signature: Signature) -> tuple[QrCode, Placement]:
    """The stored code and where it sits."""
    matrix = np.array([[c == "1" for c in row] for row in signature.matrix], dtype=bool)
    code = code_from_matrix(signature.payload, signature.version, signature.error_level, matrix)
    placement = Placement(signature.layer, signature.row, signature.col, int(signature.report["placement_matched"]),
                          int(code.data.sum()))
    return code, placement


def check_signature(*, secret: bytes, signature: Signature, owner_id: str, arch: str,
                    ticket_weights: dict[str, torch.Tensor], suspect_weights: dict[str, torch.Tensor],
                    suspect_mask: Mask, permutations: int, seed: int) -> dict[str, Any]:
    """`read_signature` against a stored credential, with the decoded payload checked against the
    owner's MAC (a valid one is decisive). The payload text itself is not returned."""
    code, placement = code_of(signature)
    result = read_signature(arch, code, placement, ticket_weights, suspect_weights, suspect_mask,
                            key=whitening_key(secret, signature.ticket_id), permutations=permutations, seed=seed)
    decoded = result.pop("decoded")
    return {"ticket_id": signature.ticket_id, **result, "decoded": decoded is not None,
            "payload_valid": decoded is not None and payload_is_valid(secret, owner_id, signature.ticket_id, decoded)}


EVIDENCE_IMAGES = {"expected.png": lambda window, code: expected_png(code),
                   "window.png": window_png, "difference.png": difference_png}


def evidence_image(signature: Signature, window_rows: list[str], name: str) -> bytes:
    """One PNG of the QR evidence (`EVIDENCE_IMAGES`) for a window a verification stored."""
    code, _ = code_of(signature)
    window = np.array([[c == "1" for c in row] for row in window_rows], dtype=bool)
    return EVIDENCE_IMAGES[name](window, code)
