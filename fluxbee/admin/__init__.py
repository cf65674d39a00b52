"""The admin HTTP API (``SY.admin``): the original's paths and envelope, over pluggable backends.

Layers: :mod:`.errors` and :mod:`.schemas` (pure), :mod:`.actions` (the action handlers shared by
HTTP and the ``ADMIN_COMMAND`` socket twin), :mod:`.backend` (the placement backend protocol) with
:mod:`.local` (the ``fluxbee up`` supervisor), :mod:`.http` (aiohttp routes, auth, limits),
:mod:`.openapi` (the document, generated from the same route table), :mod:`.gateway`
(``ADMIN_COMMAND`` over the router) and :mod:`.client` (``admin_command`` for SDK users, HTTP client).
"""
