"""OpenPGP in process: packets and constants, public and secret keys, building a signed message around a signature
value. No gpg here: this layer works on bytes. Above ``format``, below ``gnupg``."""
