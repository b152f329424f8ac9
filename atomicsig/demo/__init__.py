"""``atomicsig demo``: a throwaway registry, image and keys to show the whole flow on a fresh machine.

The tests reuse its registry and image helpers (:mod:`atomicsig.demo.env`).
"""
