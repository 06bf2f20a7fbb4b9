"""Evidence that holds outside this machine: a Merkle tree over the ledger, signed checkpoints,
proofs a third party can check offline.

- `merkle`: the producer's tree (RFC 6962 §2.1): hashing, the frontier that gives the root of
  every new size, inclusion and consistency proofs read from perfect subtrees.
- `tiles`: where those subtrees sit in c2sp.org/tlog-tiles tiles of 256 hashes.
- `note`: Ed25519 note keys, signed notes (c2sp.org/signed-note) and checkpoints
  (c2sp.org/tlog-checkpoint), as the producer writes them.
- `check`: the verifier, written from the specifications and sharing no code with the two
  above, so that it checks them rather than repeats them.
- `bundle_check`: the evidence bundle's verifier (docs/evidence.md, "Evidence bundle"): a
  decision's record, decoded values, proofs and signed checkpoint, checked offline with
  `check` and nothing of the producer (`mlwitness.audit.bundle`).

Nothing here touches storage; the ledger plugs its tables in through `merkle.SubtreeHashes`.
"""
