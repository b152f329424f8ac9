"""HTTP, both ways: the registry client, credentials and tokens, bounded body reads, and the hardened HTTP server
the ``serve`` feature runs on. The only layer that imports ``requests`` or ``cheroot``. Beside ``signers``, above
``format``.
"""
