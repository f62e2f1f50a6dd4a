"""The transparency log's Merkle tree, signed tree heads and receipts, with what a verifier needs offline:
nothing here reads the database.

The tree is RFC 9162's (Certificate Transparency v2): SHA-256, leaves hashed with a 0x00 prefix and
nodes with 0x01, built and proven by `pymerkle`. Leaf i (from 1) is audit event i's chain hash, which
commits to the event's content and to every event before it; a tree head is the root over the first
`tree_size` leaves, signed with the log's Ed25519 key.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pymerkle import BaseMerkleTree, ConsistencyProof, InclusionProof, InvalidProof

from service.audit.chain import canonical_json, event_body, link_hash
from service.audit.log_key import key_id, sign, signature_valid

LOG_FORMAT = "ticketguard-audit-log/v1"
RECEIPT_FORMAT = "ticketguard-receipt/v1"
EVENT_FIELDS = ("seq", "ts", "actor", "action", "subject", "owner_id", "ticket_id", "payload")


class VerificationFailed(ValueError):
    """A tree head, proof or receipt that does not verify; the message says which part and why."""


class HashTree(BaseMerkleTree):
    """An in-memory RFC 9162 tree over leaves given as the events' chain hashes (hex), in order."""

    def __init__(self, chain_hashes: list[str] | None = None) -> None:
        super().__init__("sha256")
        self._digests: list[bytes] = []
        self.append_entries(bytes.fromhex(h) for h in chain_hashes or [])

    def _encode_entry(self, data: bytes) -> bytes:
        return data

    def _store_leaf(self, data: bytes, digest: bytes) -> int:
        self._digests.append(digest)
        return len(self._digests)

    def _get_leaf(self, index: int) -> bytes:
        return self._digests[index - 1]

    def _get_leaves(self, offset: int, width: int) -> list[bytes]:
        return self._digests[offset:offset + width]

    def _get_size(self) -> int:
        return len(self._digests)

    def root_hex(self, size: int | None = None) -> str:
        return self.get_root(size).hex()


def leaf_hash(chain_hash: str) -> bytes:
    """RFC 9162's leaf hash of an event: SHA-256(0x00 || its chain hash's 32 bytes)."""
    return hashlib.sha256(b"\x00" + bytes.fromhex(chain_hash)).digest()


@dataclass(frozen=True)
class TreeHead:
    """A signed tree head: the root over the log's first `tree_size` events at `timestamp`."""

    tree_size: int
    root_hash: str
    timestamp: str
    key_id: str
    signature: str = ""

    def signed_message(self) -> bytes:
        return canonical_json({"log": LOG_FORMAT, "tree_size": self.tree_size, "root_hash": self.root_hash,
                               "timestamp": self.timestamp, "key_id": self.key_id}).encode()

    def to_dict(self) -> dict[str, Any]:
        return {"log": LOG_FORMAT, **asdict(self)}

    @classmethod
    def signed(cls, key: Ed25519PrivateKey, *, tree_size: int, root_hash: str, timestamp: str) -> TreeHead:
        unsigned = cls(tree_size, root_hash, timestamp, key_id(key.public_key()))
        return cls(tree_size, root_hash, timestamp, unsigned.key_id, sign(key, unsigned.signed_message()))

    @classmethod
    def from_dict(cls, value: Any) -> TreeHead:
        """A tree head from its JSON (a checkpoint file, a receipt's `tree_head`); VerificationFailed when
        a field is missing or malformed."""
        if not isinstance(value, dict) or value.get("log") != LOG_FORMAT:
            raise VerificationFailed(f"not a tree head of this log format ({LOG_FORMAT})")
        try:
            head = cls(int(value["tree_size"]), str(value["root_hash"]), str(value["timestamp"]),
                       str(value["key_id"]), str(value["signature"]))
            datetime.fromisoformat(head.timestamp)
            bytes.fromhex(head.root_hash)
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationFailed(f"malformed tree head: {exc!r}") from None
        if head.tree_size < 0 or len(head.root_hash) != 64:
            raise VerificationFailed("malformed tree head: negative size or a root that is not 32 bytes")
        return head

    def verify(self, public_key: Ed25519PublicKey) -> None:
        """Raise VerificationFailed unless this head is signed by `public_key`."""
        if self.key_id != key_id(public_key):
            raise VerificationFailed(f"the tree head names key {self.key_id[:16]}..., not this log's key "
                                     f"{key_id(public_key)[:16]}...")
        if not signature_valid(public_key, self.signed_message(), self.signature):
            raise VerificationFailed("the tree head's signature does not verify with the log's public key")


def event_json(event: Any) -> dict[str, Any]:
    """An event as the API and receipts give it: its hashed body, its predecessor's hash and its own."""
    return event_body(event) | {"prev_hash": event.prev_hash, "hash": event.hash}


def check_event(event: Any) -> str:
    """An event's chain hash recomputed from its JSON (receipt form); VerificationFailed when it differs."""
    if not isinstance(event, dict) or any(field not in event for field in (*EVENT_FIELDS, "prev_hash", "hash")):
        raise VerificationFailed("malformed event: it needs " + ", ".join((*EVENT_FIELDS, "prev_hash", "hash")))
    body = {field: event[field] for field in EVENT_FIELDS}
    if link_hash(str(event["prev_hash"]), body) != event["hash"]:
        raise VerificationFailed("the event's content does not match its hash")
    return str(event["hash"])


def verify_inclusion(chain_hash: str, index: int, head: TreeHead, proof: Any) -> None:
    """Raise VerificationFailed unless the leaf `chain_hash` sits at `index` in the tree `head` signs."""
    try:
        parsed = InclusionProof.deserialize(proof)
        parsed.verify(leaf_hash(chain_hash), bytes.fromhex(head.root_hash), index=index, size=head.tree_size,
                      algorithm="sha256", security=True)
    except (InvalidProof, ValueError) as exc:
        raise VerificationFailed(f"the inclusion proof does not verify: {exc}") from None


def verify_consistency(older: TreeHead, newer: TreeHead, proof: Any) -> None:
    """Raise VerificationFailed unless `newer`'s tree extends `older`'s (RFC 9162 consistency proof);
    an empty older tree is extended by any tree, an equal size needs equal roots."""
    failed = f"the log of {newer.tree_size} events does not extend the tree head of {older.tree_size}"
    if older.tree_size > newer.tree_size:
        raise VerificationFailed(f"{failed}: it holds fewer events, so events were removed")
    if older.tree_size == 0:
        return
    if older.tree_size == newer.tree_size:
        if older.root_hash != newer.root_hash:
            raise VerificationFailed(f"{failed}: same size, another root, so the log was rewritten")
        return
    try:
        parsed = ConsistencyProof.deserialize(proof)
        parsed.verify(bytes.fromhex(older.root_hash), bytes.fromhex(newer.root_hash),
                      prior_size=older.tree_size, later_size=newer.tree_size, algorithm="sha256", security=True)
    except (InvalidProof, ValueError) as exc:
        raise VerificationFailed(f"{failed}: the consistency proof fails ({exc}), so events at or before "
                                 f"{older.tree_size} were changed") from None


def verify_receipt(receipt: Any, public_key: Ed25519PublicKey) -> TreeHead:
    """Check a receipt offline: the event's hash, its inclusion in the signed tree head, the head's
    signature. Returns the head; VerificationFailed names the first part that fails."""
    if not isinstance(receipt, dict) or receipt.get("format") != RECEIPT_FORMAT:
        raise VerificationFailed(f"not a receipt of this format ({RECEIPT_FORMAT})")
    head = TreeHead.from_dict(receipt.get("tree_head"))
    head.verify(public_key)
    chain_hash = check_event(receipt.get("event"))
    index = receipt.get("leaf_index")
    if not isinstance(index, int) or index != receipt["event"]["seq"]:
        raise VerificationFailed("the receipt's leaf index is not its event's number")
    verify_inclusion(chain_hash, index, head, receipt.get("inclusion_proof"))
    return head
