"""Keep a local sigstore identical to upstream sigstores (issue #5; SPEC §3.3 merge rules).

Modules, top down: :mod:`.daemon` (loop, signals, sd_notify, metrics) → :mod:`.follower` (one pass over one
source's journal) → :mod:`.source` (HTTP: Range/ETag journal reads, bounded signature GETs) and :mod:`.intake`
(trust check, then append) → :mod:`.journal` (the per-store change log) and :mod:`.prune` (key removal with
gap-free renumbering). :mod:`.config` and :mod:`.state` are the YAML config and the persisted cursors.
"""
