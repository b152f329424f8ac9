"""``atomicsig demo``: a throwaway registry, image and keys to show the whole flow on a fresh machine (tests reuse it)."""
