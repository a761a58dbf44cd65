"""Schemathesis hooks for e2e/tests/security.rs.

An `Idempotency-Key` names one request: sent again with other logs within the
idempotency window, it is refused with 422, as the IETF draft on the header asks.
Schemathesis draws header values from a small pool, so it reuses keys across the
different bodies it generates, and its check that valid data is accepted would take
those refusals for defects. A valid key is therefore replaced by a fresh UUID before
each call; an invalid key (a negative case) is left alone, to be refused as it must be.
The refusal of a reused key is tested in api/tests/ingest.rs.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"[!-~]{1,255}")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = case.headers
    if not headers:
        return
    for name in list(headers):
        if name.lower() == "idempotency-key":
            key = headers[name]
            if isinstance(key, str) and VALID_KEY.fullmatch(key):
                headers[name] = str(uuid.uuid4())
