"""The admin actions: one handler each, shared by HTTP and the ``ADMIN_COMMAND`` socket twin.

:data:`ACTIONS` is the registry (served by ``GET /admin/actions``) and :data:`ROUTES` maps the
original's HTTP paths onto it; the OpenAPI document is generated from both.  Handlers validate
their ``params`` with the action's model, raise :class:`~fluxbee.admin.errors.AdminError` with a
specific code, and return the payload of the envelope.  Reads take no lock; changes to the router
config take one lock per hive (they are read-modify-write of the route list).

One module per job: :mod:`.hives`, :mod:`.nodes`, :mod:`.lifecycle` (start, restart, instance removal),
:mod:`.router_config` (routes and VPN rules),
:mod:`.versions` (versions and runtimes), :mod:`.deployments` (the history journals) and
:mod:`.identity` (ILKs and modules over SY.identity), over :mod:`.common` (context, checks, the
history entry around a change); :mod:`.inventory` sits above them (it reads the hives' and the nodes'
rows) and :mod:`.registry` lists them all.
"""

from fluxbee.admin.actions.common import Call, Context
from fluxbee.admin.actions.registry import (
                                            ACTIONS,
                                            HIVE_QUERY_SWITCH,
                                            ROUTES,
                                            Action,
                                            Handler,
                                            Route,
                                            describe_validation,
                                            dispatch,
)

__all__ = ["ACTIONS", "HIVE_QUERY_SWITCH", "ROUTES", "Action", "Call", "Context", "Handler", "Route",
           "describe_validation", "dispatch"]
