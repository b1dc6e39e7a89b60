"""Reproduced results: Ed25519 signatures by the maintainers' reproduction.

A maintainer's reproduction re-runs an entry's required seeds with this harness and signs each results file
it wrote with a key that only it holds (``speedrun sign``). The signature covers the file's ``digest``, the
sha256 of every other field, so it seals every number in the file. The public keys live in
``keys/reproduction.toml``; a key is ``active`` (signs now), ``retired`` (signs no more, its signatures stay
valid: rotation) or ``revoked`` (leaked: its signatures count for nothing). No module that trains or
evaluates imports this one, so a change here stales no result.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from speedrun.errors import SpeedrunError, format_validation_error
from speedrun.fileio import atomic_write_text
from speedrun.results import RunResult
from speedrun.tracks import read_toml

KEYS_FILE = Path("keys") / "reproduction.toml"
SIGNING_KEY_ENV = "SPEEDRUN_SIGNING_KEY"  # the PEM text of the private key, as a CI secret holds it
# Domain separation: a signature over a result can never be one over anything else this key signs.
_CONTEXT = b"prx-speedrun result v1\0"


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class ReproductionKey(BaseModel):
    """One public key of the reproduction, as ``keys/reproduction.toml`` lists it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="key_id of the public key.")
    public_key: str = Field(description="The raw 32-byte Ed25519 public key, base64.")
    holder: str = Field(min_length=1, description="Who holds the private key (a CI environment, a maintainer).")
    status: Literal["active", "retired", "revoked"]

    @field_validator("public_key")
    @classmethod
    def _is_a_key(cls, value: str) -> str:
        try:
            Ed25519PublicKey.from_public_bytes(base64.b64decode(value, validate=True))
        except ValueError:  # not base64 (binascii.Error), or not 32 bytes
            raise ValueError("not a base64 raw Ed25519 public key (32 bytes)") from None
        return value

    @model_validator(mode="after")
    def _id_is_the_keys(self) -> ReproductionKey:
        if self.id != (expected := key_id(base64.b64decode(self.public_key))):
            raise ValueError(f"key id '{self.id}' is not its public key's ({expected})")
        return self

    def verifies(self, digest: str, signature: bytes) -> bool:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(self.public_key))
        try:
            public.verify(signature, _CONTEXT + digest.encode())
        except InvalidSignature:
            return False
        return True


class Signature(BaseModel):
    """``<results file>.sig``: which key signed the file's digest, and the signature (base64)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    signature: str


class Trust(BaseModel):
    """``keys/reproduction.toml``: the tracks the reproduction re-runs, where a result counts only signed, and
    the public keys whose signatures count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reproduces: list[str] = Field(default=[], description="Track ids; elsewhere results are self-reported.")
    key: list[ReproductionKey] = []

    @property
    def keys(self) -> dict[str, ReproductionKey]:
        return {k.id: k for k in self.key}


def load_trust(repo_root: Path) -> Trust:
    """``keys/reproduction.toml`` under ``repo_root``; no tracks and no keys when it is absent."""
    path = repo_root / KEYS_FILE
    if not path.is_file():
        return Trust()
    try:
        trust = Trust.model_validate(read_toml(path))
    except ValidationError as exc:
        raise SpeedrunError(format_validation_error(str(path), exc)) from None
    if len(trust.keys) != len(trust.key):
        raise SpeedrunError(f"{path}: a key id is listed twice")
    return trust


def signature_path(result_path: Path) -> Path:
    return result_path.with_name(result_path.name + ".sig")


def signer(path: Path, digest: str, keys: dict[str, ReproductionKey]) -> str | None:
    """The id of the key whose valid signature of ``digest`` lies beside the results file ``path``; None when
    there is no signature (a self-reported result). A signature that does not hold raises ``SpeedrunError``."""
    sig_path = signature_path(path)
    try:
        st = os.lstat(sig_path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:  # a link, a FIFO, or no signature's size
            raise SpeedrunError(f"{sig_path}: not a signature file")
        signature = Signature.model_validate(json.loads(sig_path.read_bytes()))
        raw = base64.b64decode(signature.signature, validate=True)
    except FileNotFoundError:  # no signature: a self-reported result
        return None
    except (OSError, ValueError):  # ValueError: not JSON, not base64, or not the schema (a ValidationError)
        raise SpeedrunError(f"{sig_path}: not a signature file") from None
    key = keys.get(signature.key)
    if key is None:
        raise SpeedrunError(f"{sig_path}: signed by key '{signature.key}', which {KEYS_FILE} does not list")
    if key.status == "revoked":
        raise SpeedrunError(f"{sig_path}: signed by key '{key.id}', revoked in {KEYS_FILE}")
    if not key.verifies(digest, raw):
        raise SpeedrunError(f"{sig_path}: the signature does not match the results file: one of them was edited")
    return key.id


def private_key(path: Path | None) -> Ed25519PrivateKey:
    """The signing key from a PEM file, else from ``$SPEEDRUN_SIGNING_KEY``."""
    source = str(path) if path else f"${SIGNING_KEY_ENV}"
    try:
        pem = path.read_bytes() if path else os.environ[SIGNING_KEY_ENV].encode()
        key = serialization.load_pem_private_key(pem, password=None)
    except KeyError:
        raise SpeedrunError(f"no signing key: pass --key-file or set ${SIGNING_KEY_ENV}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise SpeedrunError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SpeedrunError(f"{source}: not an Ed25519 key")
    return key


def sign(path: Path, result: RunResult, key: Ed25519PrivateKey, keys: dict[str, ReproductionKey]) -> Path:
    """Write ``<path>.sig`` for the results file ``path``; the key must be listed ``active``."""
    kid = key_id(_raw(key.public_key()))
    listed = keys.get(kid)
    if listed is None or listed.status != "active":
        state = "is not listed" if listed is None else f"is {listed.status}"
        raise SpeedrunError(f"the signing key '{kid}' {state} in {KEYS_FILE}: only an active key signs")
    signature = base64.b64encode(key.sign(_CONTEXT + result.digest.encode())).decode()
    out = signature_path(path)
    atomic_write_text(out, Signature(key=kid, signature=signature).model_dump_json(indent=1) + "\n")
    return out


def new_key(path: Path, holder: str) -> str:
    """Write a new private key to ``path`` (readable by its owner only; never over a file) and return the
    ``[[key]]`` entry that lists its public key as active."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SpeedrunError(f"{path}: already exists; a new key never replaces a file") from None
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot write it ({exc.strerror})") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    raw = _raw(key.public_key())
    public = base64.b64encode(raw).decode()
    return f'[[key]]\nid = "{key_id(raw)}"\npublic_key = "{public}"\nholder = {json.dumps(holder)}\nstatus = "active"\n'
