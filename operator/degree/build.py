"""Degree digests and graduation checks (pure): the operator refuses Pods for an agent whose degree does not verify.

The encodings are the identity service's (``fluxbee.identity.degrees``): a module digest is
sha256 of its text, a degree digest is sha256 over the tagged canonical JSON of its pinned
``[name, version, sha256]`` triples, and a graduation is an Ed25519 signature over the tagged
tuple (ILK, degree name, degree version, degree digest).  Here the pins come from the Module
and Degree resources, so the operator recomputes every digest from the texts it can read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fluxbee.identity import degrees as dg
from fluxbee.models import DegreeSpec, Module
from fluxbee.models.resources import DegreeBinding
from fluxbee.operator.conditions import Outcome
from fluxbee.operator.module.build import content_sha256

DEGREE_NOT_FOUND = "DegreeNotFound"
MODULE_NOT_FOUND = "ModuleNotFound"
MODULE_VERSION_MISMATCH = "ModuleVersionMismatch"
KEY_UNAVAILABLE = "IdentityKeyUnavailable"


def resolve_pins(spec: DegreeSpec, modules: Mapping[str, Module]) -> list[dg.PinnedModule]:
    """The degree's pinned modules, in order, with the texts the operator can read.

    A pin without ``sha256`` pins the module's current content.  Raises
    :class:`~fluxbee.identity.degrees.DegreeVerificationError` for a missing module or a
    version the degree does not pin.
    """
    pins: list[dg.PinnedModule] = []
    for ref in spec.modules:
        module = modules.get(ref.name)
        if module is None:
            raise dg.DegreeVerificationError(
                MODULE_NOT_FOUND, f"module {ref.name!r} does not exist"
            )
        if module.spec.version != ref.version:
            raise dg.DegreeVerificationError(
                MODULE_VERSION_MISMATCH,
                f"module {ref.name!r} is version {module.spec.version!r}; "
                f"the degree pins {ref.version!r}",
            )
        pins.append(dg.PinnedModule(ref.name, ref.version, ref.sha256 or content_sha256(module.spec),
                                    module.spec.content))
    return pins


def degree_digest(pins: list[dg.PinnedModule]) -> str:
    return dg.degree_digest(pins)


def check_pins(pins: list[dg.PinnedModule]) -> None:
    """Every module text hashes to its pin (ModuleDigestMismatch otherwise)."""
    for pin in pins:
        if pin.prompt_text is not None and dg.module_digest(pin.prompt_text) != pin.sha256:
            raise dg.DegreeVerificationError(
                dg.MODULE_DIGEST_MISMATCH,
                f"module {pin.name}@{pin.version}: content hashes to "
                f"{dg.module_digest(pin.prompt_text)[:16]}…, the degree pins {pin.sha256[:16]}…",
            )


def verify_binding(
    binding: DegreeBinding,
    agent_ilk: str,
    degree_name: str,
    degree_spec: DegreeSpec,
    modules: Mapping[str, Module],
    public_key: Ed25519PublicKey,
) -> str:
    """Verify a FluxNode's graduation; return the degree digest.

    Raises :class:`~fluxbee.identity.degrees.DegreeVerificationError` with the reason.
    """
    pins = resolve_pins(degree_spec, modules)
    record = binding.graduation
    graduation = dg.Graduation(
        ilk_id=record.ilk_id or agent_ilk,
        degree_name=binding.name,
        degree_version=binding.version,
        digest=record.digest,
        signature=record.signature,
        key_id=record.key_id,
    )
    dg.verify_graduation(graduation, pins, public_key, expect_ilk=agent_ilk,
                         expect_degree=(degree_name, degree_spec.version))
    return record.digest


def degree_outcome(
    spec: DegreeSpec, modules: Mapping[str, Module], graduations: tuple[int, int] = (0, 0)
) -> Outcome:
    """Ready with the digest when every pin resolves and matches; Degraded with the reason.

    ``graduations``: (verified, total) of the FluxNodes that run this degree.
    """
    verified, total = graduations
    try:
        pins = resolve_pins(spec, modules)
        check_pins(pins)
    except dg.DegreeVerificationError as err:
        return Outcome.degraded(err.code, err.detail)
    fields: dict[str, Any] = {
        "digest": degree_digest(pins),
        "graduations": f"{verified}/{total}",
        "verifiedGraduations": verified,
        "failedGraduations": total - verified,
    }
    return Outcome.ready(
        f"{len(pins)} modules pinned; {verified}/{total} graduations verify", **fields
    )
