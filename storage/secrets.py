"""Mailbox secrets at rest: encrypted with keys kept in their own file under instance/.

The key file (MAILBOX_KEY_FILE, by default instance/secret.keys, mode 0600) holds one
Fernet key a line, newest first: a MultiFernet encrypts with the first and decrypts with
any, so a key is rotated by adding a new first line and re-encrypting (`flask mailbox
rotate-key`), then dropping the old line. The database alone (a backup, a copied file) reveals no password.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_FILE = "secret.keys"


class SecretError(Exception):
    """A stored secret cannot be read with the keys at hand (wrong or missing key file)."""


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    # Written 0600 aside, then linked (first writer wins: several workers may start at
    # once) or renamed over (rotation): never readable by others, never half-written.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _keys(path: Path) -> list[bytes]:
    if not path.exists():
        _write_private(path, Fernet.generate_key() + b"\n", replace=False)
    return [line.strip() for line in path.read_bytes().splitlines() if line.strip()]


class Vault:
    """Encrypts and decrypts mailbox secrets with a key file (made on first use)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._loaded: MultiFernet | None = None

    @property
    def _fernet(self) -> MultiFernet:
        # Loaded (and the file made) at the first secret sealed or opened, not by merely
        # building a Vault: a deployment without mailbox secrets gets no key file.
        if self._loaded is None:
            self._loaded = MultiFernet([Fernet(key) for key in _keys(self.path)])
        return self._loaded

    def seal(self, plain: str) -> str:
        """The stored form of a secret."""
        return self._fernet.encrypt(plain.encode()).decode("ascii")

    def open(self, sealed: str | None) -> str:
        """The secret a stored value holds ("" for none)."""
        if not sealed:
            return ""
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except InvalidToken as exc:
            raise SecretError(f"a stored secret cannot be decrypted with the keys in {self.path}") from exc

    def reseal(self, sealed: str | None) -> str | None:
        """The same secret encrypted with the newest key (key rotation)."""
        return self._fernet.rotate(sealed.encode("ascii")).decode("ascii") if sealed else sealed

    def add_key(self) -> None:
        """Put a new key first; older keys still decrypt until `reseal` has run everywhere."""
        keys = _keys(self.path)
        _write_private(self.path, b"\n".join([Fernet.generate_key(), *keys]) + b"\n", replace=True)
        self._loaded = None


def merge_keys(path: str | os.PathLike, extra: str | os.PathLike) -> int:
    """Append to the key file at `path` the keys of `extra` it lacks (a restored backup's);
    the newest key stays first. Makes `path` when missing. The number of keys added."""
    path = Path(path)
    have = [line.strip() for line in path.read_bytes().splitlines() if line.strip()] if path.exists() else []
    new = [key for key in _keys_in(Path(extra)) if key not in have]
    if new:
        _write_private(path, b"\n".join([*have, *new]) + b"\n", replace=True)
    return len(new)


def _keys_in(path: Path) -> list[bytes]:
    keys = [line.strip() for line in path.read_bytes().splitlines() if line.strip()]
    for key in keys:
        Fernet(key)  # a malformed line raises ValueError here, not later in a sending thread
    return keys
