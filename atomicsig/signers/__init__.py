"""Signers: anything that turns a payload into one OpenPGP signed message. One factory
(:func:`atomicsig.signers.factory.make_signer`) picks the gpg, gpg-agent or in-memory signer. Above ``gnupg``."""
