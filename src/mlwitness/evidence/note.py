"""Signed notes, Ed25519 note keys and checkpoints, as the producer writes them.

The formats are c2sp.org/signed-note@v1 and c2sp.org/tlog-checkpoint, the ones Go's
golang.org/x/mod/sumdb/note reads and writes; the test vectors include notes signed by Go.

Signed note:

    <text: one or more lines, each ending in U+000A>
    <one empty line>
    — <key name> <base64(key ID ‖ signature)>       one such line per signature, at least one

- The whole note is UTF-8 and has no control character below U+0020 other than U+000A.
- The text includes its last newline but not the empty separator line. The text may contain
  empty lines itself: the signatures begin after the *last* empty line of the note.
- A signature line is: em dash (U+2014), space, key name, space, the standard padded base64
  (RFC 4648 §4) of 4 + n bytes — the key ID as a big-endian uint32, then the n-byte signature
  of the text's UTF-8 bytes — and a newline.
- Key names are non-empty and contain no Unicode space, no "+" and no control character.
- Limits (ours, for readers' safety; the spec asks for at least 16 signatures): a note is at
  most MAX_NOTE_BYTES long, carries at most MAX_SIGNATURES signatures, and each signature
  line (without its newline) is at most MAX_LINE_BYTES long.

Ed25519 keys (signature type 0x01; RFC 8032 Ed25519, deterministic):

    key ID        = first 4 bytes of SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)
    verifier key  = <key name>+<key ID: 8 lowercase hex digits>+<base64(0x01 ‖ public key)>
    signer key    = PRIVATE+KEY+<key name>+<key ID: 8 lowercase hex>+<base64(0x01 ‖ 32-byte seed)>

The signer key is the secret (the RFC 8032 private key seed); the verifier key is what
auditors are given. Both carry the key ID, which must match the one computed from the key.

Checkpoint: a signed note whose text is

    <origin>                          the log's identity, non-empty
    <tree size>                       ASCII decimal, no leading zero (except "0"), < 2**64
    <base64 of the 32-byte root>      RFC 6962 Merkle Tree Hash at that size
    <extension line>…                 optional, each non-empty and opaque

each line ending in U+000A, signed by the log's key, whose name SHOULD be the origin.
Lines are at most MAX_LINE_BYTES long.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a key is made: ~8 MiB a sidecar without one never needs
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIG_ED25519 = 0x01
MAX_NOTE_BYTES = 1 << 20
MAX_SIGNATURES = 100
MAX_LINE_BYTES = 8192
MAX_TREE_SIZE = (1 << 64) - 1

_SIG_PREFIX = "— "
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_HEX_ID = re.compile(r"[0-9a-f]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class NoteError(ValueError):
    """A note, key or checkpoint that does not follow its format."""


def is_valid_name(name: str) -> bool:
    """A key name: non-empty, no Unicode space, no "+", no control character."""
    return bool(name) and "+" not in name and not any(c.isspace() or c < " " for c in name)


def key_id(name: str, signature_type: int, public_key: bytes) -> int:
    """SHA-256(name ‖ 0x0A ‖ signature type ‖ public key), first 4 bytes as a big-endian int."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([signature_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def verifier_key(name: str, public_key: bytes) -> str:
    """The verifier key of Ed25519 public key `public_key` (32 bytes) under `name`."""
    _check_name(name)
    if len(public_key) != 32:
        raise NoteError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    encoded = base64.b64encode(bytes([SIG_ED25519]) + public_key).decode()
    return f"{name}+{key_id(name, SIG_ED25519, public_key):08x}+{encoded}"


def parse_verifier_key(vkey: str) -> tuple[str, int, bytes]:
    """(name, key ID, 32-byte public key) of an Ed25519 verifier key; the ID is checked."""
    name, _, rest = vkey.partition("+")
    hex_id, _, encoded = rest.partition("+")
    key = _key_material(name, hex_id, encoded, "verifier key")
    return name, int(hex_id, 16), key


class Signer:
    """An Ed25519 note key that signs. It holds the secret; its repr shows only the name and ID."""

    __slots__ = ("name", "key_id", "public_key", "_seed", "_private")

    def __init__(self, name: str, seed: bytes) -> None:
        _check_name(name)
        if len(seed) != 32:
            raise NoteError(f"an Ed25519 seed is 32 bytes, not {len(seed)}")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._seed = bytes(seed)
        self._private: Ed25519PrivateKey = Ed25519PrivateKey.from_private_bytes(self._seed)
        self.name = name
        self.public_key = self._private.public_key().public_bytes_raw()
        self.key_id = key_id(name, SIG_ED25519, self.public_key)

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A new random key (the operating system's CSPRNG, through `cryptography`)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_signer_key(cls, skey: str) -> Signer:
        """The signer of an encoded signer key; its key ID must match the derived public key."""
        if not skey.startswith(_PRIVATE_PREFIX):
            raise NoteError("a signer key starts with PRIVATE+KEY+")
        name, _, rest = skey[len(_PRIVATE_PREFIX) :].partition("+")
        hex_id, _, encoded = rest.partition("+")
        if not is_valid_name(name) or not _HEX_ID.fullmatch(hex_id):
            raise NoteError("malformed signer key")
        signer = cls(name, _ed25519_material(encoded, "signer key"))
        if signer.key_id != int(hex_id, 16):
            raise NoteError("the signer key's ID does not match its key")
        return signer

    def signer_key(self) -> str:
        """The encoded secret key. Keep it secret."""
        encoded = base64.b64encode(bytes([SIG_ED25519]) + self._seed).decode()
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_id:08x}+{encoded}"

    def verifier_key(self) -> str:
        return verifier_key(self.name, self.public_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message` (not yet a note signature line)."""
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id:08x})"


def generate_key(name: str) -> tuple[str, str]:
    """A new (signer key, verifier key) pair for `name`."""
    signer = Signer.generate(name)
    return signer.signer_key(), signer.verifier_key()


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature line of a note: who (name, key ID) and the signature bytes after the ID."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        """The signature line, newline included."""
        encoded = base64.b64encode(self.key_id.to_bytes(4, "big") + self.signature).decode()
        return f"{_SIG_PREFIX}{self.name} {encoded}\n"


@dataclass(frozen=True, slots=True)
class Note:
    """A note's text and its signature lines as they stand; nothing here says they verify
    (that is check.py's job)."""

    text: str
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()


def parse_note(message: bytes) -> Note:
    """Split a signed note into its text and signature lines, checking the format only."""
    if len(message) > MAX_NOTE_BYTES:
        raise NoteError(f"note is longer than {MAX_NOTE_BYTES} bytes")
    try:
        decoded = message.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError("note is not UTF-8") from exc
    _check_characters(decoded, "note")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no empty line before its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("note does not end with a signature line and a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return Note(text, tuple(_parse_signature_line(line) for line in lines))


def sign_note(text: str, signers: Sequence[Signer], keep: Sequence[Signature] = ()) -> bytes:
    """The signed note of `text`: the signatures in `keep` first (except any by one of the
    signers' keys, which is replaced), then one new signature per signer, in order — the layout
    Go's note.Sign writes. Ed25519 is deterministic, so the same key and text give the same
    bytes."""
    if not signers and not keep:
        raise NoteError("a note needs at least one signature")
    _check_text(text)
    data = text.encode()
    mine = {(s.name, s.key_id) for s in signers}
    kept = [s for s in keep if (s.name, s.key_id) not in mine]
    for s in kept:
        _check_name(s.name)
    new = [Signature(s.name, s.key_id, s.sign(data)) for s in signers]
    message = Note(text, tuple(kept + new)).to_bytes()
    if len(message) > MAX_NOTE_BYTES or len(kept) + len(new) > MAX_SIGNATURES:
        raise NoteError("the signed note would exceed the note limits")
    return message


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head as a checkpoint note's text (c2sp.org/tlog-checkpoint)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for line in (self.origin, *self.extensions):
            if not line or "\n" in line:
                raise NoteError("checkpoint lines are non-empty single lines")
            _check_characters(line, "checkpoint")
            if len(line.encode()) > MAX_LINE_BYTES:
                raise NoteError(f"checkpoint line longer than {MAX_LINE_BYTES} bytes")
        if isinstance(self.size, bool) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise NoteError(f"tree size {self.size} is out of range")
        if len(self.root) != 32:
            raise NoteError(f"a root hash is 32 bytes, not {len(self.root)}")

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "".join(line + "\n" for line in lines + list(self.extensions))

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint in a note text (`Note.text`), checked line by line."""
        if not text.endswith("\n"):
            raise NoteError("checkpoint text does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("checkpoint has fewer than three lines")
        origin, size, root, *extensions = lines
        if not _DECIMAL.fullmatch(size) or int(size) > MAX_TREE_SIZE:
            raise NoteError(f"checkpoint tree size is not a decimal uint64: {size!r:.40}")
        return cls(origin, int(size), _b64decode(root, "checkpoint root"), tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[Signer]) -> bytes:
    """The signed checkpoint note."""
    return sign_note(checkpoint.text(), signers)


def _parse_signature_line(line: str) -> Signature:
    if len(line.encode()) > MAX_LINE_BYTES:
        raise NoteError(f"signature line longer than {MAX_LINE_BYTES} bytes")
    if not line.startswith(_SIG_PREFIX):
        raise NoteError("signature line does not start with an em dash and a space")
    name, space, encoded = line[len(_SIG_PREFIX) :].partition(" ")
    if not space or not is_valid_name(name):
        raise NoteError(f"malformed signature line: {line!r:.80}")
    raw = _b64decode(encoded, "signature")
    if len(raw) < 5:
        raise NoteError("signature is shorter than a key ID and one byte")
    return Signature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def _key_material(name: str, hex_id: str, encoded: str, what: str) -> bytes:
    if not is_valid_name(name) or not _HEX_ID.fullmatch(hex_id):
        raise NoteError(f"malformed {what}")
    key = _ed25519_material(encoded, what)
    if key_id(name, SIG_ED25519, key) != int(hex_id, 16):
        raise NoteError(f"the {what}'s ID does not match its key")
    return key


def _ed25519_material(encoded: str, what: str) -> bytes:
    raw = _b64decode(encoded, what)
    if len(raw) != 33:
        raise NoteError(f"malformed {what}")
    if raw[0] != SIG_ED25519:
        raise NoteError(f"{what} has signature type {raw[0]:#04x}; only Ed25519 (0x01) is known")
    return raw[1:]


def _b64decode(text: str, what: str) -> bytes:
    """Standard padded base64, canonical only (one encoding per value)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise NoteError(f"{what} is not base64") from exc
    if not text or base64.b64encode(raw).decode() != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text ends with a newline")
    _check_characters(text, "note text")


def _check_characters(text: str, what: str) -> None:
    if _CONTROL.search(text):
        raise NoteError(f"{what} contains a control character other than newline")
    if _SURROGATE.search(text):
        raise NoteError(f"{what} is not valid UTF-8")


def _check_name(name: str) -> None:
    if not is_valid_name(name):
        raise NoteError(f"not a key name: {name!r:.80}")
