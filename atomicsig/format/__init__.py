"""Pure formats, no I/O beyond what a caller hands in: references, manifests, the signature payload, identity rules,
signature blobs, strict JSON/YAML, durations, validators, the lookaside path grammar and the extension-API wire
format, where containers tools read their config (``containers_paths``) and OpenReports
(``openreports``). Imports nothing of atomicsig but ``errors`` (and ``fsutil`` nowhere): the bottom layer."""
