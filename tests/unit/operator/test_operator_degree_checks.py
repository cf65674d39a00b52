"""Pure degree checks of the operator: the identity service's encodings and reasons."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fluxbee.identity import degrees as dg
from fluxbee.models import DegreeSpec, Module
from fluxbee.models.resources import DegreeBinding
from fluxbee.operator.degree.build import degree_outcome, verify_binding

ILK = "ilk:6f1c2a52-7b0e-4c39-9d64-0a1f3c5e8b21"


def module(name: str, text: str, version: str = "1") -> Module:
    return Module.model_validate({"metadata": {"name": name},
                                  "spec": {"version": version, "content": text}})


MODULES = {"tone": module("tone", "Be kind."), "billing": module("billing", "Refunds: 5 days.")}
SPEC = DegreeSpec.model_validate({"version": "3", "modules": [
    {"name": "tone", "version": "1"}, {"name": "billing", "version": "1"}]})
DIGEST = dg.degree_digest([dg.PinnedModule(n, "1", dg.module_digest(m.spec.content))
                           for n, m in MODULES.items()])


def binding(key: Ed25519PrivateKey, digest: str = DIGEST, version: str = "3") -> DegreeBinding:
    grad = dg.sign_graduation(key, ILK, "support", version, digest)
    return DegreeBinding.model_validate({"name": "support", "version": version, "graduation": {
        "digest": grad.digest, "signature": grad.signature, "keyId": grad.key_id}})


def test_a_graduation_signed_over_the_resources_digest_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    assert verify_binding(binding(key), ILK, "support", SPEC, MODULES, key.public_key()) == DIGEST


@pytest.mark.parametrize(("case", "reason"), [
    ("edited-module", dg.DEGREE_DIGEST_MISMATCH),
    ("other-key", dg.SIGNATURE_INVALID),
    ("other-version", dg.GRADUATION_MISMATCH),
    ("missing-module", "ModuleNotFound"),
])
def test_each_tamper_has_its_reason(case: str, reason: str) -> None:
    key = Ed25519PrivateKey.generate()
    modules, bound, public = dict(MODULES), binding(key), key.public_key()
    if case == "edited-module":
        modules["tone"] = module("tone", "Be rude.")
    elif case == "other-key":
        public = Ed25519PrivateKey.generate().public_key()
    elif case == "other-version":
        bound = binding(key, version="2")
    else:
        del modules["billing"]
    with pytest.raises(dg.DegreeVerificationError) as caught:
        verify_binding(bound, ILK, "support", SPEC, modules, public)
    assert caught.value.code == reason


def test_the_degree_status_shows_digest_and_graduation_counts() -> None:
    outcome = degree_outcome(SPEC, MODULES, (2, 3))
    assert outcome.phase == "Ready" and outcome.fields["digest"] == DIGEST
    assert outcome.fields["graduations"] == "2/3" and outcome.fields["failedGraduations"] == 1
    pinned = DegreeSpec.model_validate({"version": "3", "modules": [
        {"name": "tone", "version": "1", "sha256": dg.module_digest("Something else.")}]})
    assert degree_outcome(pinned, MODULES).reason == dg.MODULE_DIGEST_MISMATCH
