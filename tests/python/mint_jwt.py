"""Mints JWTs for the black-box tests with PyJWT, an implementation
independent of the server's.

    mint_jwt.py keys DIR   writes RSA keys a and b (a-private.pem,
                           a-public.pem, b-private.pem) and the JWKS files
                           jwks-a.json (key a) and jwks-ab.json (a and b)
    mint_jwt.py mint       reads a JSON list of token specs on stdin and
                           prints the JSON list of tokens

A spec is {"alg": ..., "key": PATH, "claims": {...}, "kid": optional}.
"alg": "none" makes an unsigned token. With "forge": true the token is
built by hand, signed with HMAC-SHA256 keyed by the bytes of "key" but
labelled with "alg" (algorithm-confusion attacks, which PyJWT refuses to
produce).
"""

import base64
import hashlib
import hmac
import json
import pathlib
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def keys(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    jwks = []
    for name in ["a", "b"]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (out / f"{name}-private.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public = key.public_key()
        (out / f"{name}-public.pem").write_bytes(
            public.public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        )
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        jwk["kid"] = name
        jwks.append(jwk)
    (out / "jwks-a.json").write_text(json.dumps({"keys": jwks[:1]}))
    (out / "jwks-ab.json").write_text(json.dumps({"keys": jwks}))


def mint(spec: dict) -> str:
    alg, claims = spec["alg"], spec.get("claims", {})
    headers = {"kid": spec["kid"]} if "kid" in spec else None
    if alg == "none":
        return jwt.encode(claims, None, algorithm="none", headers=headers)
    key = pathlib.Path(spec["key"]).read_bytes()
    if spec.get("forge"):
        header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        body = b64(json.dumps(claims).encode())
        signing_input = f"{header}.{body}".encode()
        signature = hmac.new(key, signing_input, hashlib.sha256).digest()
        return f"{header}.{body}.{b64(signature)}"
    if alg.startswith("HS"):
        key = key.strip()
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def main() -> None:
    if sys.argv[1:2] == ["keys"]:
        keys(pathlib.Path(sys.argv[2]))
    elif sys.argv[1:] == ["mint"]:
        print(json.dumps([mint(spec) for spec in json.load(sys.stdin)]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
