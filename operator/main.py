"""``fluxbee operator``: run the operator, or print the CRDs it serves.

    fluxbee operator [run] [--namespace NS] [--peering NAME] [--priority N] [--image IMAGE]
                           [--resync-interval SECONDS]
    fluxbee operator crds            # the CRD YAML generated from the models, for kubectl apply

It logs in as ``fluxbee.kube.KubeConfig.from_environment`` finds: the pod's service account in a
cluster (``$FLUXBEE_SERVICE_ACCOUNT_DIR``, default ``/var/run/secrets/kubernetes.io/serviceaccount``),
else the current context of ``$KUBECONFIG`` (or ``~/.kube/config``); kopf's watches and the
handlers' client use that one login.  The event loop is chosen here and only here (uvloop when
available).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import ssl
import sys
from collections.abc import Callable

from fluxbee.kube import KubeConfig, KubeConfigError
from fluxbee.operator.settings import OperatorSettings, SettingsError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxbee operator", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the operator (the default)")
    for target in (parser, run):
        target.add_argument("--namespace", help="watch one namespace (env FLUXBEE_WATCH_NAMESPACE)")
        target.add_argument("--peering", help="kopf peering name for HA (env FLUXBEE_OPERATOR_PEERING)")
        target.add_argument("--priority", type=int, help="peering priority (default: random)")
        target.add_argument("--image", help="hive/default node image (env FLUXBEE_IMAGE)")
        target.add_argument("--resync-interval", type=_seconds, metavar="SECONDS",
                            help="reconcile every Hive this often without an event: certificate renewal, "
                                 "repair of its Secrets (env FLUXBEE_OPERATOR_RESYNC_INTERVAL, default 600)")
        target.add_argument("--verbose", "-v", action="store_true")
    sub.add_parser("crds", help="print the CustomResourceDefinitions")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "crds":
        from fluxbee.models.crd import all_crds

        sys.stdout.write("---\n".join(all_crds().values()))
        return 0
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as err:
        print(f"fluxbee operator: {err}", file=sys.stderr)
        return 2
    overrides = {
        "namespace": args.namespace,
        "peering": args.peering,
        "priority": args.priority,
        "image": args.image,
        "resync_interval": args.resync_interval,
    }
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        access = KubeConfig.from_environment()
        access.ssl_context()  # bad CA/certificate files are reported here, not as a traceback
    except (KubeConfigError, ssl.SSLError, OSError) as err:
        print(f"fluxbee operator: no Kubernetes API to log in to: {err}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("API server %s (%s)", access.server, access.source)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(settings, access))
    return 0


async def _serve(settings: OperatorSettings, access: KubeConfig) -> None:
    from fluxbee.operator.app import run
    from fluxbee.operator.kube import KubeClient

    async with KubeClient(access, user_agent="fluxbee-operator") as kube:
        await run(settings, kube, access)


if __name__ == "__main__":
    sys.exit(main())
