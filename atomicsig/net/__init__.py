"""HTTP, both ways: the one fetcher every client request goes through (fetch), the registry client, credentials
and tokens, and the hardened HTTP server the ``serve`` feature runs on (httpd). The only layer that imports
``requests``, ``urllib3`` or ``cheroot``. Beside ``signers``, above ``format``.
"""
