"""``atomicsig serve``: publish a sigstore over HTTP (lookaside GET, extension API, journal), metrics, limits."""
