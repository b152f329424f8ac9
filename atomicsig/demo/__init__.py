"""``atomicsig demo``: a throwaway registry, images and keys showing the whole flow on a fresh machine."""
