"""Key stores other than GnuPG homes: the Sequoia home skopeo's and podman's Sequoia signer read (files, no gpg).
Rank 4, a sibling of ``gnupg``: above ``openpgp``, below ``signers``."""
