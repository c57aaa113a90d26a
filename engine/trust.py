"""Caches that hold only what segrt wrote: records signed with a per-installation key.

segrt's caches (TensorRT engines, their timing and int8 calibration caches, converted zoo
models) are read back by code that trusts them: deserialising a TensorRT engine runs code, and
a swapped model file would segment patients with another network. A checksum beside a file
proves nothing (whoever swaps the file writes the checksum too), so every cache record carries
an HMAC-SHA256 over its content, keyed with 32 random bytes that segrt creates on first use and
keeps outside every cache folder (``$SEGRT_KEY_FILE``, default
``$XDG_CONFIG_HOME/segrt/cache.key`` or ``~/.config/segrt/cache.key``, mode 0600). A record
whose HMAC does not verify (written by hand, by another installation, or altered) is refused
by name; files it lists are checked against their SHA-256.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets

from segrt.engine.model_file import file_sha256

__all__ = ["CacheTrustError", "key_path", "sign", "verify", "signed_record", "check_record"]

_KEY_BYTES = 32


class CacheTrustError(RuntimeError):
    """A cache file that segrt did not write, or that changed since (the message names it)."""


def key_path() -> str:
    explicit = os.environ.get("SEGRT_KEY_FILE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "segrt", "cache.key")


def _key(create: bool) -> bytes | None:
    path = key_path()
    try:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) == _KEY_BYTES:
            return key
        raise CacheTrustError(f"{path}: segrt's cache key is damaged ({len(key)} bytes, expected {_KEY_BYTES}); "
                              "delete it (segrt then rebuilds its caches) or restore it")
    except FileNotFoundError:
        if not create:
            return None
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    key = secrets.token_bytes(_KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never replaces an existing key
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def _canonical(record: dict) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k != "hmac"}, sort_keys=True,
                      separators=(",", ":")).encode()


def sign(record: dict) -> dict:
    """``record`` with its ``hmac`` field set (the key is created on first use)."""
    mac = hmac.new(_key(create=True), _canonical(record), hashlib.sha256).hexdigest()
    return {**record, "hmac": mac}


def verify(record: dict) -> bool:
    """True when ``record`` carries a valid HMAC of this installation."""
    key = _key(create=False)
    if key is None or not isinstance(record, dict) or not isinstance(record.get("hmac"), str):
        return False
    want = hmac.new(key, _canonical(record), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, record["hmac"])


def signed_record(files: dict, **fields) -> dict:
    """A signed record of ``files`` ({name: path}) with their SHA-256, plus ``fields``."""
    return sign({**fields, "files": {name: file_sha256(path) for name, path in files.items()}})


def check_record(record_path: str, files: dict, what: str) -> dict:
    """The record at ``record_path`` after checking its HMAC and each file's SHA-256; raises
    CacheTrustError naming the file that fails."""
    try:
        with open(record_path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise CacheTrustError(f"{record_path}: the record of this {what} is missing; segrt uses only caches it "
                              "wrote itself") from None
    except (OSError, ValueError, RecursionError) as err:
        raise CacheTrustError(f"{record_path}: the record of this {what} cannot be read ({type(err).__name__})") \
            from None
    if not verify(record):
        raise CacheTrustError(f"{record_path}: this {what} was not written by this installation's segrt (its "
                              "signature does not verify); it is refused")
    listed = record.get("files") or {}
    for name, path in files.items():
        if name not in listed:
            raise CacheTrustError(f"{record_path}: the record does not list {name}; this {what} is refused")
        if not os.path.isfile(path) or file_sha256(path) != listed[name]:
            raise CacheTrustError(f"{path}: differs from what segrt wrote (SHA-256 mismatch); this {what} is refused")
    return record
