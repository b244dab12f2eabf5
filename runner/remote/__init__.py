"""Dispatch of builds to a Remote Execution API (REAPI v2) service.

`RemoteExecutor(endpoint, settings).build(drv_path, drv, closure, store)` runs
one derivation remotely and registers its outputs in the local store, which
stays the source of truth; the remote ActionCache is a second cache.
Contract: docs/remote.md.
"""
