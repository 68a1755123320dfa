"""The egress ledger's bound: past its destinations, traffic is counted under one
"other" entry rather than lost or grown without end."""

from __future__ import annotations

from vessel.host._egress import OTHER, EgressLedger, destination


def test_destinations_past_the_bound_are_counted_together() -> None:
    ledger = EgressLedger(max_destinations=2)
    ledger.used(destination("https", "a.example", None), requests=1, sent=3)
    ledger.used(destination("wss", "b.example", 8443), connections=1)
    ledger.used(destination("http", "c.example", 80), requests=1, received=5)
    ledger.denied(destination("ws", "::1", 9))
    ledger.used(destination("https", "a.example", 443), requests=1)
    entries = {e.destination: e for e in ledger.entries()}
    assert set(entries) == {"https://a.example:443", "wss://b.example:8443", OTHER}
    assert entries["https://a.example:443"].requests == 2
    other = entries[OTHER]
    assert (other.requests, other.bytes_received, other.denied) == (1, 5, 1)
    # Most recent first: a.example was used last.
    assert ledger.entries()[0].destination == "https://a.example:443"
