"""SY.identity: an ordinary SDK node that owns tenants, ILKs, channels, aliases and degrees.

Per request, in this order (the original's, with its bugs fixed):
authorise by the router-stamped ``routing.src_l2_name`` -> decode the payload
(unknown fields refused) -> DB_NOT_READY while the store is not open -> one
database transaction that validates before it writes -> apply the committed
change to the identity region -> reply ``<ACTION>_RESPONSE`` with the same
trace id.  Requests are handled one at a time, so the region sees changes in
commit order.  A restart rebuilds the region from the database.

Primary and replicas (:mod:`fluxbee.identity.sync`): an instance started with
``primary`` set is a **replica**: it has no database, answers mutations (and
the reads that need full records) with ``NOT_PRIMARY`` naming the primary,
serves IDENTITY_METRICS itself, and fills its own hive's identity region from
the primary's full sync and deltas, resyncing whenever its copy may be stale.
The primary publishes one delta per committed write, in commit order, while
holding the write lock (which also serialises the alias GC and snapshots for
new subscribers).

One module per job: :mod:`.settings`, :mod:`.auth` (who may send what), :mod:`.regions` (with
:mod:`.shown`: a full sync rewrites only what changed),
:mod:`.actions` (one handler per action), :mod:`.replication` (both sides) and :mod:`.node`
(lifecycle and dispatch), over :mod:`.state`; :class:`IdentityService` composes them.
"""

from fluxbee.identity.service.auth import Authorizer
from fluxbee.identity.service.node import IdentityService
from fluxbee.identity.service.settings import IdentitySettings

__all__ = ["Authorizer", "IdentityService", "IdentitySettings"]
