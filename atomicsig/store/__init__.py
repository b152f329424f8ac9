"""Where signatures live: the lookaside directory store (with its per-digest lock, gap-free reads, journal, origins
and prune), the HTTP lookaside, the registry extension-API client, registries.d, and the choice ``--sigstore`` makes.
Above ``net``."""
