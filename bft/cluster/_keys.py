"""Private key files, and public keys as operators pass them from machine to machine.

A node's private key is made on the machine where the node runs (``bft keygen``)
and never leaves it: one file holding the 32-byte Ed25519 seed as 64 hex digits,
mode 0600, never overwritten.  Only the public key travels: 64 hex digits that
``bft cluster add-replica`` (or ``add-client``, ``add-operator``) writes into the
cluster file.  ``bft init``, the one-machine shortcut, makes every key of a local
cluster with the same ``create_key_file``.
"""

from __future__ import annotations

import os
import stat

import nacl.bindings

from ..core import KeyPair

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
OWNER_ONLY_MODE = 0o600


class ConfigFileError(Exception):
    """A cluster file or key file that cannot be used; ``str()`` is one sentence naming the file."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def create_key_file(path: str | os.PathLike) -> KeyPair:
    """Make a fresh key pair, write its seed to the new file ``path`` (mode 0600) and return it.

    An existing file is never replaced: a key that signed votes or requests may still be needed to
    tell who signed them, and a replaced key silently locks its node out of the cluster.
    """
    if os.path.isdir(path):  # Creating it exclusively would only say that it exists.
        raise ConfigFileError(path, "this is a directory; give the name of a new key file")
    keypair = KeyPair.generate()
    try:
        write_key_file(path, keypair)
    except FileExistsError:
        raise ConfigFileError(path, "a key file already exists here; a key is never replaced (move the old one "
                                    "away first, or choose another file)") from None
    except OSError as error:
        raise ConfigFileError(path, f"cannot write the key file ({error.strerror or error})") from None
    return keypair


def write_key_file(path: str | os.PathLike, keypair: KeyPair) -> None:
    """Write ``keypair``'s seed as hex to a new file readable by its owner only (mode 0600)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_ONLY_MODE)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), OWNER_ONLY_MODE)  # The umask may have narrowed it; it must not be wider.
        file.write(keypair.seed.hex() + "\n")
        file.flush()
        os.fsync(file.fileno())  # The public key is printed next and may be put in a cluster file at once.
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


def read_key_file(path: str | os.PathLike, expected_public_key: bytes | None = None) -> bytes:
    """The 32-byte seed in a key file, checked for owner-only permissions and against the configured key."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with open(path, "rb") as file:
            text = file.read(4 * SEED_BYTES).decode("ascii", errors="replace")
    except FileNotFoundError:
        raise ConfigFileError(path, "the key file does not exist") from None
    except OSError as error:
        raise ConfigFileError(path, f"cannot read the key file ({error.strerror or error})") from None
    if mode & 0o077:
        raise ConfigFileError(path, f"the key file is readable by other users (mode {mode:o}); run chmod 600 on it")
    try:
        seed = bytes.fromhex(text.strip())
    except ValueError:
        seed = b""
    if len(seed) != SEED_BYTES:
        raise ConfigFileError(path, f"a key file must hold one {SEED_BYTES}-byte seed as {2 * SEED_BYTES} hex digits")
    if expected_public_key is not None and KeyPair.from_seed(seed).public_key != expected_public_key:
        raise ConfigFileError(path, "the key in this file does not match the public key in the cluster file")
    return seed


def public_key_problem(text: str) -> str | None:
    """Why ``text`` is not a usable public key (hex of an Ed25519 point), as a phrase; None if it is one."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != PUBLIC_KEY_BYTES:
        return f"must be {2 * PUBLIC_KEY_BYTES} hex digits (what bft keygen prints)"
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(key):
        return "is not an Ed25519 public key (no key bft keygen makes looks like this; was it copied whole?)"
    return None


def parse_public_key(text: str) -> bytes:
    """The 32 bytes of a public key given as hex; ``ValueError`` with a phrase saying what is wrong."""
    problem = public_key_problem(text)
    if problem:
        raise ValueError(problem)
    return bytes.fromhex(text)
