"""``atomicsig serve``: publish a sigstore over HTTP (lookaside GET, extension API, journal), with metrics and limits."""
