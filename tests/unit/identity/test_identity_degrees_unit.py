"""Digests, canonical encodings and signatures of degrees (pure)."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fluxbee.identity import degrees as dg


def modules() -> list[dg.PinnedModule]:
    return [dg.PinnedModule("a", "1", dg.module_digest("alpha"), "alpha"),
            dg.PinnedModule("b", "2", dg.module_digest("beta"), "beta")]


def test_degree_digest_depends_on_order_and_every_pin() -> None:
    base = dg.degree_digest(modules())
    assert base == dg.degree_digest(modules())
    assert dg.degree_digest(list(reversed(modules()))) != base
    bumped = [modules()[0], dataclasses.replace(modules()[1], version="3")]
    assert dg.degree_digest(bumped) != base
    assert dg.degree_encoding(modules()).startswith(b"fluxbee-degree-v1\n")


def test_a_valid_graduation_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    grad = dg.sign_graduation(key, "ilk:x", "support", "1", dg.degree_digest(modules()))
    dg.verify_graduation(grad, modules(), key.public_key(), expect_ilk="ilk:x", expect_degree=("support", "1"))


@pytest.mark.parametrize("tamper, reason", [
    ("module", dg.MODULE_DIGEST_MISMATCH),
    ("degree", dg.DEGREE_DIGEST_MISMATCH),
    ("signature", dg.SIGNATURE_INVALID),
    ("key", dg.SIGNATURE_INVALID),
    ("ilk", dg.GRADUATION_MISMATCH),
])
def test_each_kind_of_tampering_is_refused_with_its_reason(tamper: str, reason: str) -> None:
    key = Ed25519PrivateKey.generate()
    mods = modules()
    grad = dg.sign_graduation(key, "ilk:x", "support", "1", dg.degree_digest(mods))
    public = key.public_key()
    if tamper == "module":
        mods[0] = dataclasses.replace(mods[0], prompt_text="evil")
    elif tamper == "degree":
        mods[1] = dg.PinnedModule("b", "2", dg.module_digest("evil"), "evil")
    elif tamper == "signature":
        grad = dataclasses.replace(grad, digest=dg.degree_digest(mods[:1]))
        mods = mods[:1]
    elif tamper == "key":
        public = Ed25519PrivateKey.generate().public_key()
    elif tamper == "ilk":
        grad = dataclasses.replace(grad, ilk_id="ilk:y")
    with pytest.raises(dg.DegreeVerificationError) as err:
        dg.verify_graduation(grad, mods, public, expect_ilk="ilk:x" if tamper == "ilk" else None)
    assert err.value.code == reason
