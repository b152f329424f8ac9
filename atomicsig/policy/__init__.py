"""The node trust-policy compiler (issue #3): YAML → policy.json, registries.d files and keyrings.

``schema`` parses the YAML, ``keymaterial`` loads keys, ``render`` compiles (pure), ``apply`` plans and writes
with ownership tracking, ``explain`` reads a node's real configuration back. docs/policy.md is the reference.
"""
