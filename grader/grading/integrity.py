"""The secret seed of the integrity re-run: one per submission, derived from a secret key.

`--integrity` runs a notebook a second time with `torch.manual_seed` mapped to a secret seed.
That seed is in the learner's kernel while the re-run lasts, so it has to be assumed that it
can get out one day. What keeps that from mattering:
- each submission gets its own seed, `HMAC-SHA256(key, notebook sha256)` reduced to
  2..2**31-2 (never 1, the lab's seed, nor the rubric's seed): a seed learnt from one
  re-run is worth nothing for any other notebook, and any change to a notebook (typing in the
  numbers for a leaked seed, say) gives it a new seed;
- the key stays with the harness: `$MBGD_SECRET_SEED`, else the gradebook's (drawn once per
  gradebook, recorded where the seed used to be, so an existing gradebook's seed number
  simply becomes its key), else a fresh one per grading; it never enters a kernel;
- nothing of the re-run but the one answer it is checked on leaves `grader.pipeline` (not its
  notes, errors, other variables, figures or duration), and the check's messages are fixed
  texts, so no result, report, CSV row, webhook answer or log line carries the seed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

SEED_LOW = 2  # 0 and 1 are out: 1 is the lab's own seed
SEED_HIGH = 2**31 - 1  # exclusive; the range the seeds were always drawn from
LAB_SEED = 1
_CONTEXT = b"mbgd-grader integrity seed v1\x00"


def new_key() -> str:
    """A fresh integrity key: 256 random bits as hex."""
    return secrets.token_hex(32)


def key_digest(key: str) -> str:
    """What may stand for the key where its identity matters (the gradebook's grade keys)."""
    return hashlib.sha256(b"mbgd-grader integrity key\x00" + key.encode()).hexdigest()


def seed_in_range(number: int, avoid: Iterable[int] = ()) -> int:
    """`number` reduced to SEED_LOW..SEED_HIGH-1, stepping past the lab's and `avoid` seeds."""
    span = SEED_HIGH - SEED_LOW
    banned = {LAB_SEED, *avoid}
    seed = SEED_LOW + number % span
    while seed in banned:
        seed = SEED_LOW + (seed - SEED_LOW + 1) % span
    return seed


def derive_seed(key: str, notebook_sha256: str, avoid: Iterable[int] = ()) -> int:
    """The secret seed of one submission: HMAC-SHA256(key, its sha256), in range.

    `avoid`: seeds it must not be besides 1 (the rubric's answer seed)."""
    if not key:
        raise ValueError("the integrity key is empty")
    message = _CONTEXT + notebook_sha256.strip().lower().encode("ascii")
    digest = hmac.new(key.encode("utf-8"), message, hashlib.sha256).digest()
    return seed_in_range(int.from_bytes(digest, "big"), avoid)
