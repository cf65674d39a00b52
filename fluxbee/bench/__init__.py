"""``fluxbee bench``: routed request/reply and throughput against a floor and a peer, in one run.

The modules, from the command down:

* :mod:`.run` — ``run_bench`` (the command): runs the sections in turn, prints JSON or the report;
* :mod:`.report` — what a section is, and the text report put together from the sections' lines;
* :mod:`.transports` — the transports section: the peers measured in interleaved, rested rounds,
  and the routed round trip and throughput as ratios to the floor and to NATS;
* :mod:`.memory` — the router memory section: its resident memory idle and with many idle nodes;
* :mod:`.policy` — the policy section: one routing decision by each policy engine, 10,000 identities;
* :mod:`.crosshive` — the cross-hive section: a round trip and a one-way stream over the mTLS link
  between two hives, against two NATS servers joined by a route; dead-link detection and healing;
* :mod:`.peers` — each transport as a peer: floor, relay, fluxbee, NATS;
* :mod:`.harness` — the child processes, and what is read about them from ``/proc``;
* :mod:`.results` — the run's sizes (``Plan``) and one transport's figures (``Result``);
* :mod:`.workers` — the child processes' own code (``python -m fluxbee.bench.workers ROLE``).

Results are ratios measured in one run on one machine, never absolute targets: the machines are
shared and noisy.  A new measurement is a new section module and one entry in ``run.SECTIONS``.
"""
