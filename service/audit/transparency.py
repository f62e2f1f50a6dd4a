"""The transparency log over the audit events, read from the database: signed tree heads (stored, so a
later rewrite contradicts them), inclusion and consistency proofs, receipts, and the whole log's check
against the heads it has signed and a checkpoint kept outside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.audit.chain import HEAD_ID, timestamp_text, verify_chain
from service.audit.log_key import signing_key
from service.audit.merkle import (
    RECEIPT_FORMAT,
    HashTree,
    TreeHead,
    VerificationFailed,
    event_json,
)
from service.config import Settings
from service.errors import APIError
from service.models import AuditEvent, AuditHead, AuditTreeHead, utcnow


def log_key(settings: Settings, session: Session) -> Ed25519PrivateKey:
    """The log's signing key. Generated only for a log that has signed nothing yet: a key file gone
    missing later is an error to fix (restore it), not a reason to start a new key that every earlier
    tree head and receipt would then contradict."""
    if not settings.resolved_log_key_file.exists() and session.execute(select(AuditTreeHead.id).limit(1)).first():
        raise APIError(503, "log_key_missing", f"the transparency log's key file {settings.resolved_log_key_file} "
                                               "is missing, but the log has signed tree heads with it: restore the "
                                               "file (or set TICKETGUARD_LOG_KEY_FILE to where it is)")
    return signing_key(settings)


def log_size(session: Session) -> int:
    return session.get(AuditHead, HEAD_ID).seq


def stored_tree(session: Session, size: int) -> HashTree:
    """The tree over the first `size` events' stored chain hashes (the serving path: a check that the
    hashes match the events' content is `verify_log`'s)."""
    hashes = session.execute(select(AuditEvent.hash).where(AuditEvent.seq <= size)
                             .order_by(AuditEvent.seq)).scalars().all()
    if len(hashes) != size:
        raise APIError(409, "log_damaged", f"the audit log should hold {size} events but {len(hashes)} were read; "
                                           "run `ticketguard audit verify`")
    return HashTree(list(hashes))


def _head_of(row: AuditTreeHead) -> TreeHead:
    return TreeHead(row.tree_size, row.root_hash, timestamp_text(row.timestamp), row.key_id, row.signature)


def latest_tree_head(session: Session, key: Ed25519PrivateKey) -> TreeHead:
    """A signed head over the whole log: the last one stored if the log has not grown since, else a new
    one, signed now and stored in the caller's transaction."""
    size = log_size(session)
    last = session.execute(select(AuditTreeHead).order_by(AuditTreeHead.id.desc()).limit(1)).scalar()
    if last is not None and last.tree_size == size:
        return _head_of(last)
    now = utcnow()
    root = stored_tree(session, size).root_hex()
    head = TreeHead.signed(key, tree_size=size, root_hash=root, timestamp=timestamp_text(now))
    session.add(AuditTreeHead(tree_size=head.tree_size, root_hash=head.root_hash, timestamp=now,
                              key_id=head.key_id, signature=head.signature))
    session.flush()
    return head


def inclusion_proof(session: Session, seq: int, tree_size: int) -> dict[str, Any]:
    """The proof that event `seq` is leaf `seq` of the tree over the first `tree_size` events."""
    if not 1 <= seq <= tree_size <= log_size(session):
        raise APIError(422, "invalid_proof_request", f"need 1 <= seq <= tree_size <= {log_size(session)} "
                                                     f"(the log's size), got seq {seq}, tree_size {tree_size}")
    return stored_tree(session, tree_size).prove_inclusion(seq, tree_size).serialize()


def consistency_proof(session: Session, first: int, second: int) -> dict[str, Any] | None:
    """The proof that the tree over the first `second` events extends the one over the first `first`
    (None where RFC 9162 needs none: an empty first tree, or equal sizes)."""
    size = log_size(session)
    if not 0 <= first <= second <= size:
        raise APIError(422, "invalid_proof_request", f"need 0 <= first <= second <= {size} (the log's size), "
                                                     f"got first {first}, second {second}")
    if first == 0 or first == second:
        return None
    return stored_tree(session, second).prove_consistency(first, second).serialize()


def receipt(session: Session, event: AuditEvent, key: Ed25519PrivateKey) -> dict[str, Any]:
    """What an owner keeps: the event, its leaf index, a signed tree head that includes it and the
    inclusion proof. Verifiable offline with the log's public key (`ticketguard receipt verify`)."""
    head = latest_tree_head(session, key)
    return {"format": RECEIPT_FORMAT, "event": event_json(event), "leaf_index": event.seq,
            "tree_head": head.to_dict(), "inclusion_proof": inclusion_proof(session, event.seq, head.tree_size)}


@dataclass
class LogReport:
    """The whole log checked: the chain, every stored tree head and, where given, an outside checkpoint."""

    ok: bool
    events_checked: int
    tree_size: int = 0
    root_hash: str | None = None
    first_broken_seq: int | None = None
    reason: str | None = None
    tree_heads_checked: int = 0
    checkpoint: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events_checked": self.events_checked, "tree_size": self.tree_size,
                "root_hash": self.root_hash, "first_broken_seq": self.first_broken_seq, "reason": self.reason,
                "tree_heads_checked": self.tree_heads_checked, "checkpoint": self.checkpoint}


def _check_head(head: TreeHead, tree: HashTree, public_key: Ed25519PublicKey, label: str) -> str | None:
    """Why `head` contradicts the log (None when the log extends it)."""
    try:
        head.verify(public_key)
    except VerificationFailed as exc:
        return f"{label}: {exc}"
    size = tree.get_size()
    if head.tree_size > size:
        return (f"{label} covers {head.tree_size} events but the log holds {size}: events were removed "
                "from its end")
    if tree.root_hex(head.tree_size) != head.root_hash:
        return (f"{label} does not match the log's first {head.tree_size} events: events at or before "
                f"{head.tree_size} were changed, removed or inserted")
    return None


def verify_log(session: Session, public_key: Ed25519PublicKey, checkpoint: TreeHead | None = None) -> LogReport:
    """Recompute the chain from every event's content, then the Merkle tree over it, and check that tree
    against every tree head the log has signed and against `checkpoint` (a head kept outside the
    database). A rewrite that recomputes every later hash still contradicts a head signed before it."""
    chain = verify_chain(session)
    if not chain.ok:
        return LogReport(False, chain.events_checked, first_broken_seq=chain.first_broken_seq, reason=chain.reason)
    tree = HashTree(chain.hashes)
    report = LogReport(True, chain.events_checked, tree.get_size(), tree.root_hex())
    for row in session.execute(select(AuditTreeHead).order_by(AuditTreeHead.id)).scalars():
        report.tree_heads_checked += 1
        reason = _check_head(_head_of(row), tree, public_key, f"the stored tree head of size {row.tree_size} "
                                                              f"signed at {timestamp_text(row.timestamp)}")
        if reason:
            report.ok, report.reason = False, reason
            return report
    if checkpoint is not None:
        reason = _check_head(checkpoint, tree, public_key, f"the checkpoint of size {checkpoint.tree_size} "
                                                           f"signed at {checkpoint.timestamp}")
        report.checkpoint = {"tree_size": checkpoint.tree_size, "timestamp": checkpoint.timestamp,
                             "consistent": reason is None}
        if reason:
            report.ok, report.reason = False, reason
    return report
