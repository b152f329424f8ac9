"""``atomicsig demo``: a throwaway registry, images and keys showing the whole flow on a fresh machine.

The flow is :mod:`atomicsig.demo.run`; the tests reuse its registry and image helpers (:mod:`atomicsig.demo.env`).
"""
