"""Where signatures live: the lookaside directory store (with its per-digest lock, gap-free reads, journal, origins
and prune), the HTTP lookaside, the registry extension-API client, registries.d, and the choice ``--sigstore`` makes.
``images`` reads the images a node holds in containers-storage.
Above ``net``."""
