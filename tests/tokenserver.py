"""A Docker token server that distribution 2.8 trusts (a :class:`~tests.infra.FakeServer`), and self-signed TLS.

The token server issues RS256 JWTs (docker/distribution ``registry/auth/token``). distribution finds the
verification key through the JWS header ``kid``: it must equal the libtrust key ID of a public key in
``rootcertbundle``, which is the SHA-256 of the DER SubjectPublicKeyInfo, truncated to 240 bits, base32 without
padding, in ':'-separated groups of four characters.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.infra import FakeRequest, FakeServer, Reply


def self_signed(workdir: Path, cn: str = "127.0.0.1") -> tuple[Path, Path, rsa.RSAPrivateKey]:
    """A self-signed RSA certificate and key (PEM files) valid for 127.0.0.1."""
    import ipaddress

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    workdir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, key


def libtrust_key_id(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class TokenServer(FakeServer):
    """``GET /token?service=…&scope=repository:<name>:<actions>`` with Basic auth → a signed JWT."""

    issuer = "atomicsig-test-issuer"
    service = "atomicsig-test-registry"

    def __init__(self, workdir: Path, user: str, password: str) -> None:
        super().__init__()
        self.cert, _, self.key = self_signed(workdir / "token-ca")
        self.user, self.password = user, password
        self.issued = 0

    def jwt(self, access: list[dict[str, Any]]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": libtrust_key_id(self.key.public_key())}
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": self.user, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"

    def handle(self, req: FakeRequest) -> Reply:
        q = urllib.parse.parse_qs(req.query)
        authz = req.headers.get("Authorization", "")
        access: list[dict[str, Any]] = []
        if authz:
            scheme, _, value = authz.partition(" ")
            user, _, pw = base64.b64decode(value).decode().partition(":") if scheme.lower() == "basic" else ("", "", "")
            if (user, pw) != (self.user, self.password):
                return Reply(401)
            for scope in q.get("scope", []):
                kind, name, actions = scope.split(":", 2)
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        self.issued += 1
        return Reply(200, json.dumps({"token": self.jwt(access)}).encode(), {"Content-Type": "application/json"})
