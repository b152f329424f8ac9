"""The operations a user (or a script) runs: resolve references, sign, verify, manage keys. Typed, no printing, no
exiting: the CLI and the features call these. Above ``store`` and ``signers``."""
