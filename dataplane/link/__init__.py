"""Links between routers: one protocol over TCP + mutual TLS, in two roles.

* **mesh** — routers of one hive on different hosts (a cluster's DaemonSet) exchange their node
  tables, so a message to a node on another host crosses exactly one router-to-router hop, and
  round robin and VPNs hold across hosts;
* **wan** (gateway) — hives link to hives: a handshake with an authorised-hive list, link-state
  adverts, hello and dead timers, ``name@hive`` / ``name@*`` / broadcast across hives,
  ``next_hop_hive`` static routes, and transit (A–B–C) with no hand-written route.

Transport
---------
TCP with TLS 1.3 only, both sides present a certificate signed by the hive CA
(:mod:`~fluxbee.dataplane.link.certs`), both verify it.  The hive a router claims in its HELLO must be
the hive its certificate names (URI SAN ``fluxbee://hive/<id>``); on a mesh link it must also be our
own hive.  ``--link-insecure-dev`` drops TLS (plaintext, the claimed hive id is believed) and is
logged loudly at start; it exists for development only.  Framing is the node socket's: a u32
big-endian length and a UTF-8 JSON body ``{routing, meta, payload}``, at most 128 KiB; a larger
frame closes the link.

Handshake (every control frame: ``meta.type = "system"``, ``routing.dst = null``, ``ttl = 1``)
------------------------------------------------------------------------------------------------
1. The dialler sends ``HELLO``; the acceptor answers with its own ``HELLO``.  Payload::

       {"protocol": "fluxbee-link/1", "router_id": UUID, "router_name": "RT.gateway@A",
        "hive_id": "A", "role": "wan" | "mesh", "capabilities": ["lsa", "forwarding", "transit"],
        "timers": {"hello_interval_ms": 10000, "dead_interval_ms": 40000}}

2. Each side checks the peer's HELLO; a failure is answered ``WAN_REJECT {reason, message}`` and the
   connection is closed.  Reasons: ``CERT_HIVE_MISMATCH`` (claimed hive ≠ certificate's),
   ``HIVE_NOT_AUTHORIZED`` (not in ``--authorized-hive``, or unlinked by ``LINK_REMOVE``),
   ``MESH_HIVE_MISMATCH`` (a mesh peer of another hive), ``SAME_HIVE`` (a WAN peer of our own hive),
   ``ROLE_MISMATCH`` (a mesh HELLO on the WAN port or the reverse), ``PROTOCOL_UNSUPPORTED``,
   ``SELF_LINK`` (our own router id), ``INVALID_HELLO`` (a payload that does not parse).
3. Each side then sends ``WAN_ACCEPT {peer_router_id, negotiated: {protocol, hello_interval_ms,
   dead_interval_ms}}``: the shorter hello interval and the longer dead interval of the two, so
   neither side declares the other dead while it keeps its own promise.  The link is *up* once a
   side has sent its WAN_ACCEPT and received the peer's.
4. Both sides send their full link-state (every ``LSA`` below) — after **every** (re)connect: a new
   session starts from an empty table for that peer, so nothing stale survives a reconnect.

Anything but these frames before the link is up, or a handshake that does not finish within the
dead interval, closes the connection.

Liveness
--------
Every ``hello_interval`` each side sends ``LINK_PING {sent_ms}``; the peer answers ``LINK_PONG``
with the same ``sent_ms`` (the round-trip time shown in status).  Any frame counts as a sign of life;
a session that hears nothing for ``dead_interval`` is **closed** (the original only marked it stale),
its adverts are withdrawn at once, and a dialled link (uplink) redials with backoff (0.5 s doubling
to 30 s, reset once a link has been up).  Defaults 10 s / 40 s as in the original; both configurable.

Link-state adverts: a path vector
---------------------------------
``LSA`` payload::

    {"hive": "B", "router_id": UUID, "router_name": "...", "seq": 7, "timestamp": epoch_ms,
     "origin": "C", "path": ["B", "C"], "version": 3, "part": 0, "parts": 1,
     "nodes": [{"uuid": UUID, "name": "WF.echo@C", "vpn_id": 0}]}

One LSA describes one *origin* hive as the sender reaches it: ``path`` lists the hives from the
sender's hive to the origin, both ends included (``["B"]`` for B's own nodes, ``["B", "C"]`` for
C's nodes reached through B).  ``seq`` grows by one per LSA on a session (a lower or equal one
closes the link: ``STALE_SEQ``).  An origin's node list may span several frames (``part`` of
``parts``, same ``version``); it replaces the previous list only once every part has arrived.
``path: []`` withdraws the origin.  Rules (:mod:`~fluxbee.dataplane.link.table`, pure code):

* an advert is refused (counted, logged; the link stays) if its path does not start with the
  peer's hive, does not end with its origin, repeats a hive, or **contains our own hive** beyond
  that first hop — this is what makes loops impossible;
* for each origin the shortest path wins (fewest WAN hops; then a direct WAN link over a route
  through a mesh peer; then the lowest peer hive id, then router id), recomputed whenever an
  advert arrives or a session dies;
* a router advertises to each WAN peer its hive's nodes (its own and its mesh peers') with path
  ``[own hive]``, and for every other origin its best path with its own hive prepended — never to
  the peer it learned that path from, and never a path that contains that peer;
* to mesh peers (one full-mesh hop) a router advertises only its own nodes and the origins it
  reaches over its *own* WAN links; adverts learned over the mesh are never re-advertised on it;
* when a best path changes or disappears the router sends the new path or the withdrawal on.

So A–B–C reach each other with no hand-written route, a ring never circulates an advert, and a
dead link withdraws everything learned through it.  Transit hives are trusted to relay adverts
faithfully: a certificate proves who the neighbour is, not what lies beyond it.

Forwarding
----------
Data frames are ordinary envelopes.  Every hop to another router needs ``ttl > 1`` and sends
``ttl - 1`` (else TTL_EXCEEDED).  ``name@H`` for another hive goes to the best next hop for H;
``name@*`` prefers our hive, then the nearest hive with that name; a UUID goes to the hive that
advertised it; a ``next_hop_hive`` static route forwards to that hive's best next hop.  Nothing to
reach answers UNREACHABLE ``WAN_UNAVAILABLE`` (no link to that hive at all) or ``NODE_NOT_FOUND``
(answered by the hive that has no such node).  Broadcasts: mesh peers when ``ttl >= 2``, WAN peers
when ``ttl >= 3``, never back where they came from, never mesh to mesh; trace-id de-duplication
stops echoes.  ``dst: null`` is resolved by the first router; the forwarded frame carries the
resolved name.

Output to a link is coalesced: the data frames a router queues while it routes one read of a node go
out in one TLS write at the end of that read (frames queued elsewhere, at the next loop iteration); a
control frame is written after the data queued before it.  TLS runs on
:class:`~fluxbee.dataplane.link.tls.TlsChannel` (memory BIOs over a plain TCP transport), which
decrypts a whole read into one delivery to the session.
Plain frames cross a router without being decoded (``dataplane/router/linkroute.py``): runs of them
are re-written with ``ttl - 1`` in C on the way out, and on the way in a frame whose sender the
general path has already accepted from this session is stamped with that sender's advertised name and
queued for its local node.  The forwarded bytes then carry no ``src_l2_name`` (the receiving router
stamps it from the advert in any case).

Flow control: a link is a producer like a node connection.  When a local node cannot take what a link
brings, the router stops reading that link until the node drains (``read_pauses`` in status), instead
of refusing the frames; TCP carries the pressure back to the sending router, whose buffer for the
link passes its high-water mark (a quarter of ``max_buffer``), so it holds the local producer as it
would for a slow local node.  A node that stays over its limit past the slow-consumer timeout is cut
off as usual, which frees the link.  Time not spent reading by choice does not count toward the
dead interval.

Receipt confirmation: the peer answers each ``LINK_PING`` in order with its ``LINK_PONG``, so a pong
confirms every frame we wrote before its ping. The router keeps what it writes to a link (the sender
and the written bytes, one entry per written run) until confirmed; 256 unconfirmed frames send a ping
out of turn (one pending at a time); a pong carrying a time ahead of our clock confirms only up to
now. When a session dies, every unconfirmed frame is answered UNREACHABLE ``WAN_UNAVAILABLE`` (mesh:
``PEER_UNAVAILABLE``), "may or may not have been delivered": a sender hears within the dead interval,
never only from its timeout.

Source binding across links: a data frame from a link is routed only if its ``routing.src`` is a
node that this peer advertised (any origin); otherwise it is dropped, counted
(``LINK_SRC_NOT_ADVERTISED``) and logged — a remote hive can forge neither a local sender nor
another hive's node.  ``routing.src_l2_name`` is re-stamped from the advert.

Router control (privileged: an authenticated ``SY.*`` node or a name granted the message)
-----------------------------------------------------------------------------------------
Sent to the router (``dst`` = its UUID or name), ``meta.type = "system"``:

* ``LINK_ADD {address: "HOST:PORT"}`` → ``LINK_ADD_RESPONSE {status: "ok"|"error", address,
  error_code, error_detail}``: dial it as an uplink (``INVALID_ADDRESS``, ``NO_WAN`` when the router
  has no certificate, ``PERSIST_FAILED``); the uplink is stored in ``<run dir>/state/<router
  name>@<hive>.links.json`` and dialled again after a restart; adding an address already dialled is
  ``ok`` (idempotent).
* ``LINK_REMOVE {hive_id}`` → ``LINK_REMOVE_RESPONSE {status, hive_id, closed, forgotten,
  error_code, error_detail}``: close every link with that hive, forget stored uplinks that led to
  it, and refuse that hive (``HIVE_NOT_AUTHORIZED``) until a ``LINK_ADD`` reaches it again
  (``LINK_NOT_FOUND`` when the router knows no such link).

Both answer ``FORBIDDEN`` to anyone else (the rule of CONFIG_CHANGED and ADMIN_COMMAND).  The status
snapshot (ROUTER_STATUS_GET, ``/status``) carries::

    "wan":  {"hive_id": "A", "listen": "0.0.0.0:9000" | null, "links": [LINK, ...],
             "routes": [{"hive": "C", "next_hop": "B", "path": ["B", "C"], "via": "wan" | "mesh"}],
             "drops": {REASON: n}, "refused_hives": [ID, ...], "insecure_dev": bool, "remote_nodes": n}
    "mesh": {"hive_id": "A", "listen": ... | null, "links": [LINK, ...], "drops": {REASON: n},
             "remote_nodes": n}
    LINK = {"hive_id": "B" | null, "router_id", "address": "HOST:PORT", "direction": "in" | "out",
            "state": "connecting" | "up" | "down", "since": epoch_ms, "last_lsa_seq": int | null,
            "last_lsa_age_ms": int | null, "rtt_ms": float | null, "reason": str | null,
            "read_pauses": int}   # times the link stopped reading because a local node was full
"""
