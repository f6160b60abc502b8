"""Run and attempt ids are derived identically everywhere (and must never change for a given input)."""

from __future__ import annotations

import base64
import hashlib

from legato.protocol.ids import attempt_id_for, instance_id_for


def test_ids_are_the_base32_prefix_of_the_sha256() -> None:
    for wf, key in [("wf", "api:1"), ("billing", 'signal:ready:["2026-03-01"]'), ("x" * 200, "")]:
        digest = hashlib.sha256(f"{wf}\x00{key}".encode()).digest()
        assert instance_id_for(wf, key) == base64.b32encode(digest).decode().lower()[:16]
    step = hashlib.sha256(b"load").digest()
    assert attempt_id_for("abc", "load", 3) == f"abc-{base64.b32encode(step).decode().lower()[:6]}-3"
    assert instance_id_for("wf", "api:1") == "jenug75yvla6qtif"  # pinned: ids of stored runs never change
