"""The shared history ConfigMap's pure parts: one append, the bounds, the dropped counters."""

from __future__ import annotations

import json

from fluxbee.admin.kube_history import (
    DROPPED_KEY,
    LEASE_ANNOTATION,
    bounded,
    dropped_counts,
    history_config_map,
    lease_holder,
    lease_left,
    parse_log,
    with_entry,
)


def test_an_append_keeps_the_other_log_and_adds_one_line_at_the_end() -> None:
    data = {"deployments.jsonl": '{"n": 1}\n', "drift-alerts.jsonl": '{"a": 1}\n'}
    out = with_entry(data, "deployments.jsonl", '{"n": 2}')
    assert set(out) == {"deployments.jsonl", DROPPED_KEY}  # a merge patch: the drift log is untouched
    assert parse_log(out["deployments.jsonl"]) == [{"n": 1}, {"n": 2}]
    assert dropped_counts(out) == {}
    assert parse_log(with_entry({}, "drift-alerts.jsonl", '{"a": 2}')["drift-alerts.jsonl"]) == [{"a": 2}]


def test_the_oldest_entries_go_first_and_are_counted() -> None:
    lines = [json.dumps({"n": i}) for i in range(10)]
    kept, cut = bounded(lines, max_entries=4, max_bytes=10_000)
    assert kept == lines[6:] and cut == 6
    kept, cut = bounded(lines, max_entries=100, max_bytes=3 * (len(lines[0]) + 1))
    assert kept == lines[7:] and cut == 7
    full = {"deployments.jsonl": "".join(x + "\n" for x in lines), DROPPED_KEY: '{"deployments.jsonl": 5}'}
    out = with_entry(full, "deployments.jsonl", "x" * 10)
    assert dropped_counts(out) == {"deployments.jsonl": 5}  # within the default bounds: nothing cut


def test_unreadable_counters_and_torn_lines_are_ignored_not_fatal() -> None:
    assert dropped_counts({DROPPED_KEY: "not json"}) == {}
    assert dropped_counts({DROPPED_KEY: '{"a": "3", "b": 2, "c": true}'}) == {"b": 2}
    assert parse_log('{"n": 1}\n{"n": 2\n[]\n') == [{"n": 1}]
    assert history_config_map("demo") == "demo-admin-history"


def test_the_drift_lease_belongs_to_its_holder_until_it_runs_out() -> None:
    held = {LEASE_ANNOTATION: json.dumps({"holder": "admin-a", "until": 100.0})}
    assert lease_holder(held, 99.0) == "admin-a" and lease_left(held, "admin-a", 99.0) == 1.0
    assert lease_holder(held, 100.0) is None  # ran out: anyone may take it
    assert lease_left(held, "admin-b", 99.0) == 0.0
    assert lease_holder({}, 0.0) is None and lease_holder({LEASE_ANNOTATION: "{broken"}, 0.0) is None
    assert lease_holder({LEASE_ANNOTATION: '{"holder": "x"}'}, 0.0) is None
