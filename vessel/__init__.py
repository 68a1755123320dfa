"""Vessel: a home-server daemon that runs integrations as isolated WebAssembly components.

Layout (private modules; the names below are the public API):

* ``_manifest`` / ``_capabilities``  what a module is and what it may do
* ``_bus``       event bus: glob subscriptions, retained state, bounded queues
* ``_storage``   the daemon's SQLite database: module storage and module state
* ``_install``   installing a module folder: validate, precompile, hash
* ``_bundled``   the bundled modules a fresh data dir gets (built from source if need be)
* ``_paths``     where things are: the data dir, the cache, what the package carries
* ``_systemd``   systemd's notifications: READY=1, STATUS=, the watchdog's pings
* ``_ipc``       the messages between the daemon and a module process
* ``_modules``   module actors (WASM in a child process, native in-process), the manager
* ``host``       the code that runs inside each module process (wasmtime + host functions)
* ``gateway``    the Quart-Trio app: WebSocket + REST
* ``cli``        ``vessel`` and ``vessel-ctl``
"""
