"""``atomicsig sync``: followers that keep a sigstore identical to its sources, verifying all they receive.

Modules, top down: :mod:`.daemon` (loop, signals, sd_notify, metrics) → :mod:`.follower` (one pass over one
source's journal) → :mod:`.source` (HTTP: Range/ETag journal reads, bounded signature GETs) and :mod:`.intake`
(trust check, then append) → the store layer (:mod:`atomicsig.store.journal`, the per-store change log sync follows and
:mod:`atomicsig.store.prune`). :mod:`.config` and :mod:`.state` are the YAML config and the persisted cursors.
"""
