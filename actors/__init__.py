"""A small, generic actor runtime on trio.

Layout (private modules, this namespace re-exports the public API):

* ``_framing``   sans-IO length-prefixed frames
* ``_wire``      the msgpack message dialog between two ends of a channel
* ``_channel``   request/reply + notifications + heartbeats over a pair of trio streams
* ``_process``   a child OS process as an actor: spawn, pipes, heartbeat, stop escalation
* ``_child``     the child's side: connect to the parent, exit when the parent is gone
* ``_supervisor`` OTP-style supervision: child specs, restart policies, intensity, backoff
* ``_mailbox``   a bounded mailbox handled one message at a time

It knows nothing about WebAssembly or Vessel.
"""
