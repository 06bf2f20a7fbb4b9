"""The verifier: checks evidence from the specifications alone.

This module shares no code with the producer (merkle.py, note.py) and imports only hashlib,
base64, re and the Ed25519 of `cryptography`, so that it checks the producer instead of
repeating it, and so that an auditor can set it beside the texts it follows:

- RFC 6962 §2.1 hashing: leaf = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ left ‖ right);
- RFC 9162 §2.1.3.2, verifying an inclusion proof, and §2.1.4.2, verifying consistency;
- c2sp.org/signed-note (Ed25519 verifier keys, signature lines) and c2sp.org/tlog-checkpoint.

Every check raises VerificationError, with the reason, when the evidence does not hold, and
returns normally when it does.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

MAX_NOTE_BYTES = 1 << 20
MAX_SIGNATURES = 100
MAX_LINE_BYTES = 8192

_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX_ID = re.compile(r"[0-9a-f]{8}")


class VerificationError(ValueError):
    """The evidence does not prove what it claims."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Leaf hash `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`
    (RFC 9162 §2.1.3.2).

    Take `size` and `root` together from one verified checkpoint: a proof depends on the size
    only through its shape, so the same proof also passes for other sizes whose paths to
    leaf `index` look alike (leaf 37 has one path for every size from 65 to 128)."""
    _hashes(leaf, root, *proof)
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is not in a tree of {size} leaves")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise VerificationError("inclusion proof does not lead to the root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """The tree of `size2` leaves with root `root2` extends the tree of `size1` leaves with
    root `root1` (RFC 9162 §2.1.4.2). Equal sizes need an empty proof and equal roots; a proof
    from the empty tree is refused, since it proves nothing. As with inclusion, sizes and roots
    must come in pairs from verified checkpoints."""
    _hashes(root1, root2, *proof)
    if not 0 <= size1 <= size2:
        raise VerificationError(f"no consistency from size {size1} to size {size2}")
    if size1 == 0:
        raise VerificationError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise VerificationError("consistency proof between equal sizes must be empty")
        if root1 != root2:
            raise VerificationError("trees of equal size have different roots")
        return
    if not proof:
        raise VerificationError("consistency proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # the old tree is a perfect subtree: its root starts the path
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationError("consistency proof is shorter than the path to the root")
    if fr != root1:
        raise VerificationError("consistency proof does not lead to the old root")
    if sr != root2:
        raise VerificationError("consistency proof does not lead to the new root")


class VerifierKey(NamedTuple):
    """An Ed25519 verifier key: <name>+<8 lowercase hex key ID>+<base64(0x01 ‖ public key)>."""

    name: str
    key_id: int
    public_key: bytes


def parse_verifier_key(vkey: str) -> VerifierKey:
    """Decode an Ed25519 verifier key; the key ID must be the first four bytes of
    SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)."""
    parts = vkey.split("+", 2)  # base64 may itself contain "+"
    if len(parts) != 3 or not _is_name(parts[0]) or not _HEX_ID.fullmatch(parts[1]):
        raise VerificationError("malformed verifier key")
    name, hex_id, encoded = parts
    raw = _b64(encoded, "verifier key")
    if len(raw) != 33 or raw[0] != 0x01:
        raise VerificationError("verifier key is not an Ed25519 (type 0x01) key")
    computed = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    if computed != bytes.fromhex(hex_id):
        raise VerificationError("verifier key ID does not match the key")
    return VerifierKey(name, int(hex_id, 16), raw[1:])


class OpenedNote(NamedTuple):
    """A note whose text is vouched for by the keys in `signed_by` (verifier key strings)."""

    text: str
    signed_by: tuple[str, ...]


def open_note(message: bytes, verifier_keys: Iterable[str]) -> OpenedNote:
    """Check a signed note against known verifier keys (c2sp.org/signed-note).

    Signatures whose (key name, key ID) is not among the keys are ignored. Every signature by
    a known key must verify, and at least one must be present; otherwise the note is refused.
    """
    known: dict[tuple[str, int], tuple[str, VerifierKey]] = {}
    for vkey in verifier_keys:
        key = parse_verifier_key(vkey)
        if (key.name, key.key_id) in known:
            raise VerificationError(f"two verifier keys share name and ID: {key.name}")
        known[(key.name, key.key_id)] = (vkey, key)
    # Imported here, not with the module: the sidecar imports this module, and cryptography
    # costs it ~8 MiB of memory it needs only when a note is checked
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text, signatures = _split_note(message)
    signed_by: list[str] = []
    for name, key_id, signature in signatures:
        entry = known.get((name, key_id))
        if entry is None:
            continue
        vkey, key = entry
        try:
            Ed25519PublicKey.from_public_bytes(key.public_key).verify(signature, text.encode())
        except InvalidSignature:
            raise VerificationError(f"signature by {name} does not verify") from None
        if vkey not in signed_by:
            signed_by.append(vkey)
    if not signed_by:
        raise VerificationError("note has no signature by a known key")
    return OpenedNote(text, tuple(signed_by))


class Checkpoint(NamedTuple):
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...]


def parse_checkpoint(text: str) -> Checkpoint:
    """The tree head in a checkpoint note's text: origin, decimal size, base64 root hash, then
    optional non-empty extension lines, each line ending in a newline (c2sp.org/tlog-checkpoint)."""
    if not text.endswith("\n") or _CONTROL.search(text):
        raise VerificationError("checkpoint text is not newline-terminated plain lines")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise VerificationError("checkpoint needs origin, size and root, with no empty line")
    if any(len(line.encode()) > MAX_LINE_BYTES for line in lines):
        raise VerificationError("checkpoint line is too long")
    origin, size, root, *extensions = lines
    if not _DECIMAL.fullmatch(size) or int(size) >= 1 << 64:
        raise VerificationError("checkpoint size is not a decimal uint64")
    root_hash = _b64(root, "checkpoint root")
    if len(root_hash) != 32:
        raise VerificationError("checkpoint root is not 32 bytes")
    return Checkpoint(origin, int(size), root_hash, tuple(extensions))


def verify_checkpoint(message: bytes, origin: str, log_keys: Iterable[str]) -> Checkpoint:
    """A checkpoint note from log `origin`, signed by one of the log's verifier keys."""
    checkpoint = parse_checkpoint(open_note(message, log_keys).text)
    if checkpoint.origin != origin:
        raise VerificationError(f"checkpoint is from {checkpoint.origin!r}, not {origin!r}")
    return checkpoint


def _split_note(message: bytes) -> tuple[str, list[tuple[str, int, bytes]]]:
    """Text and (name, key ID, signature) of each signature line, format checked."""
    if len(message) > MAX_NOTE_BYTES:
        raise VerificationError("note is too long")
    try:
        decoded = message.decode("utf-8")
    except UnicodeDecodeError:
        raise VerificationError("note is not UTF-8") from None
    if _CONTROL.search(decoded):
        raise VerificationError("note contains a control character other than newline")
    at = decoded.rfind("\n\n")
    if at < 0:
        raise VerificationError("note has no empty line before its signatures")
    text, block = decoded[: at + 1], decoded[at + 2 :]
    if not block.endswith("\n"):
        raise VerificationError("note does not end with a newline-terminated signature line")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise VerificationError("note has too many signatures")
    signatures = []
    for line in lines:
        if len(line.encode()) > MAX_LINE_BYTES:
            raise VerificationError("signature line is too long")
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "—" or not _is_name(parts[1]):
            raise VerificationError("malformed signature line")
        raw = _b64(parts[2], "signature")
        if len(raw) < 5:
            raise VerificationError("signature is too short")
        signatures.append((parts[1], int.from_bytes(raw[:4], "big"), raw[4:]))
    return text, signatures


def _is_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() or c < " " for c in name)


def _b64(text: str, what: str) -> bytes:
    """Standard padded base64 (RFC 4648 §4), accepted only in its one canonical spelling."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise VerificationError(f"{what} is not base64") from None
    if not text or base64.b64encode(raw).decode() != text:
        raise VerificationError(f"{what} is not canonical base64")
    return raw


def _hashes(*hashes: bytes) -> None:
    for h in hashes:
        if not isinstance(h, bytes) or len(h) != 32:
            raise VerificationError("hashes are 32 bytes")
