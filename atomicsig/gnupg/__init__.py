"""The only place that runs gpg or talks to gpg-agent: keyrings, the trusted-key homes verification uses (with the
in-process fast path), the Assuan protocol, and where passphrases come from. Above ``openpgp``."""
