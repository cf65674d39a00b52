"""A graduated agent node: verifies its degree before it takes any message.

At start the agent connects, asks SY.identity for its graduation bundle
(GRADUATION_GET: graduation record + pinned modules with their texts) and
verifies it with the identity service's public key, read from a file it was
given (never from the reply: a forged reply cannot bring its own key).  Until
then nothing is read from the inbox.  If any check fails the node withdraws
and exits with :data:`EXIT_UNVERIFIED` and a message naming the failed check.

Once verified it answers each user message with ``text/v1`` built from its
compiled prompt (a stand-in for a model call; the point here is the gate).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, NodeSender, connect, text_of, text_v1
from fluxbee.errors import CodedError
from fluxbee.identity import degrees as dg
from fluxbee.identity import model as m
from fluxbee.identity.client import IdentityCallError, identity_call

log = logging.getLogger(__name__)

EXIT_UNVERIFIED = 3


class AgentRefused(CodedError):
    """The agent must not run; ``code`` is a degrees.* reason or an identity error code."""


@dataclass(frozen=True, slots=True)
class AgentSettings:
    name: str
    run_dir: Path
    ilk_id: str
    public_key_path: Path
    identity_node: str = "SY.identity"


def verify_bundle(bundle: dict[str, Any], public_key: Any, *, expect_ilk: str) -> dg.Graduation:
    """Check a GRADUATION_GET bundle; raise :class:`degrees.DegreeVerificationError` on any mismatch."""
    grad = dg.Graduation.from_dict(bundle.get("graduation"))
    try:
        modules = [dg.PinnedModule(str(x["name"]), str(x["version"]), str(x["sha256"]), str(x["prompt_text"]))
                   for x in bundle.get("modules", [])]
    except (KeyError, TypeError) as err:
        raise dg.DegreeVerificationError(dg.MALFORMED, f"module entry lacks {err}") from None
    dg.verify_graduation(grad, modules, public_key, expect_ilk=expect_ilk)
    return grad


async def verify_self(sender: NodeSender, settings: AgentSettings) -> tuple[dg.Graduation, str]:
    try:
        public_key = dg.load_public_key(settings.public_key_path.read_bytes())
    except (OSError, ValueError) as err:
        raise AgentRefused("PublicKeyUnavailable", f"{settings.public_key_path}: {err}") from err
    try:
        bundle = await identity_call(sender, m.GRADUATION_GET, {"ilk_id": settings.ilk_id},
                                     target=settings.identity_node)
    except IdentityCallError as err:
        raise AgentRefused(err.code, f"cannot fetch the graduation of {settings.ilk_id}: {err.detail}") from err
    try:
        grad = verify_bundle(bundle, public_key, expect_ilk=settings.ilk_id)
    except dg.DegreeVerificationError as err:
        raise AgentRefused(err.code, err.detail) from err
    prompt = "\n\n".join(str(x["prompt_text"]) for x in bundle["modules"])
    return grad, prompt


async def serve(settings: AgentSettings, stop: asyncio.Event) -> int:
    sender, receiver = await connect(NodeConfig(name=settings.name, run_dir=settings.run_dir))
    try:
        try:
            grad, prompt = await verify_self(sender, settings)
        except AgentRefused as err:
            log.error("agent %s refuses to run: %s: %s", settings.name, err.code, err.detail)
            sender.status.health_state = "ERROR"
            sender.status.last_error = str(err)
            return EXIT_UNVERIFIED
        log.info("agent %s verified: %s graduated to %s@%s (digest %s…)", sender.name, grad.ilk_id,
                 grad.degree_name, grad.degree_version, grad.digest[:12])
        sender.status.extensions["degree"] = {"name": grad.degree_name, "version": grad.degree_version,
                                              "digest": grad.digest}
        getter = asyncio.create_task(stop.wait(), name="agent-stop")
        try:
            while not stop.is_set():
                recv = asyncio.create_task(receiver.recv(), name="agent-recv")
                done, _ = await asyncio.wait({recv, getter}, return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    recv.cancel()
                    break
                msg = recv.result()
                if msg.meta.type == wire.TYPE_SYSTEM:
                    continue
                text = text_of(msg) or ""
                await sender.reply(msg, text_v1(f"[{grad.degree_name}@{grad.degree_version}] {text}"),
                                   msg_type=wire.TYPE_USER)
        finally:
            getter.cancel()
        del prompt
        return 0
    finally:
        await sender.close()
