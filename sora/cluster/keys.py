"""A host's CURVE keys and allow-list, and the sockets made with them (issue 16 point 4).

Every tcp socket between Sora hosts uses ZeroMQ's CURVE: each host has one key pair, and a
server socket accepts only clients whose public key is in its allow-list. A keys folder:

    DIR/                 mode 0700
        host.key         this host's public certificate (zmq.auth format; give it to others)
        host.key_secret  this host's secret certificate, mode 0600 (never leaves the host)
        allowed/         public certificates of the hosts allowed to connect, one NAME.key each
                         (`sora keys init` puts this host's own there, so its own processes
                         may connect to it too)

Made by `sora keys init DIR`; another host is allowed with `sora keys add DIR CERT --name N`.
The allow-list is read when a server's authenticator starts: a host added later is allowed
after that process restarts.

A server socket's refusals (a key not on the allow-list, a bad handshake) are checked by a
zmq.auth authenticator running on the socket's context (a ThreadAuthenticator for a process
with a plain context, an AsyncioAuthenticator for one on asyncio, e.g. a gateway) and each is
logged at warning with the peer's address and the reason.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
from dataclasses import dataclass, field

import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("sora.cluster.keys")

HOST_CERT = "host.key"
HOST_SECRET = "host.key_secret"
ALLOWED = "allowed"
# The ZAP domain of Sora's CURVE servers (a ZAP handler serves every socket of its context).
ZAP_DOMAIN = "sora"
# A client whose handshake fails retries this often, doubling up to the max: a refused host
# is refused (and logged) about once every 8 s, not ten times a second (ZeroMQ's default).
CLIENT_RECONNECT_IVL_MS = 1000
CLIENT_RECONNECT_IVL_MAX_MS = 8000


class KeysError(Exception):
    """A keys folder or certificate that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class KeyRing:
    """One host's keys, loaded from its keys folder."""
    directory: str
    public: bytes                 # z85, 40 bytes
    secret: bytes = field(repr=False)
    allowed_dir: str = ""

    @property
    def public_text(self) -> str:
        return self.public.decode()

    def allowed_keys(self) -> dict[str, bytes]:
        """The allow-list: certificate name (file name without .key) -> z85 public key."""
        out = {}
        for entry in sorted(os.listdir(self.allowed_dir)):
            if entry.endswith(".key"):
                out[entry[:-len(".key")]] = read_public(os.path.join(self.allowed_dir, entry))
        return out


# --- the folder -------------------------------------------------------------------------------

def init_keys(directory: str) -> KeyRing:
    """Make `directory` (0700) with a new key pair and an allow-list holding this host's own
    public key. Refuses a folder that already holds a key pair (a new one would lock out
    every host that trusts the old one)."""
    directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(directory, HOST_SECRET)):
        raise KeysError(f"{directory}: already holds a key pair ({HOST_SECRET}); remove the "
                        "folder first to make a new one (hosts that allowed the old key must "
                        "then be given the new one)")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    allowed = os.path.join(directory, ALLOWED)
    os.makedirs(allowed, mode=0o700, exist_ok=True)
    os.chmod(allowed, 0o700)
    # create_certificates writes host.key and host.key_secret; the secret is tightened at once
    # (the folder's 0700 already keeps others out while it is written).
    public_file, secret_file = zmq.auth.create_certificates(directory, "host")
    os.chmod(secret_file, 0o600)
    os.chmod(public_file, 0o644)
    shutil.copyfile(public_file, os.path.join(allowed, HOST_CERT))
    return load_keys(directory)


def _require_private(path: str, mode: str, why: str) -> None:
    """`path` must be unreadable by group and others (`mode`, e.g. "0700", is what to set)."""
    found = stat.S_IMODE(os.stat(path).st_mode)
    if found & 0o077:
        raise KeysError(f"{path}: expected mode {mode} ({why}), got {found:04o}; "
                        f"run chmod {mode[1:]} {path}")


def load_keys(directory: str) -> KeyRing:
    """The key ring in `directory`, checked: the folder exists and is not readable by others,
    the key pair is there and readable, the secret file is 0600, the allow-list exists."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise KeysError(f"{directory}: expected a keys folder made by `sora keys init "
                        f"{directory}`, got {'a file' if os.path.exists(directory) else 'nothing'}")
    _require_private(directory, "0700", "it holds this host's secret key")
    secret_file = os.path.join(directory, HOST_SECRET)
    if not os.path.isfile(secret_file):
        raise KeysError(f"{directory}: expected this host's key pair ({HOST_CERT} and "
                        f"{HOST_SECRET}, made by `sora keys init`), {HOST_SECRET} is missing")
    _require_private(secret_file, "0600", "a secret key")
    public, secret = _read_cert(secret_file)
    if secret is None:
        raise KeysError(f"{secret_file}: expected a secret certificate (zmq.auth format with "
                        "a secret-key), found only a public key")
    public_file = os.path.join(directory, HOST_CERT)
    if not os.path.isfile(public_file):
        raise KeysError(f"{directory}: expected this host's public certificate {HOST_CERT} "
                        "beside its secret one")
    if read_public(public_file) != public:
        raise KeysError(f"{public_file}: expected the public key of {HOST_SECRET}, got "
                        "another key (the pair does not match)")
    allowed = os.path.join(directory, ALLOWED)
    if not os.path.isdir(allowed):
        raise KeysError(f"{directory}: expected an allow-list folder {ALLOWED}/ (made by "
                        "`sora keys init`)")
    return KeyRing(directory=directory, public=public, secret=secret, allowed_dir=allowed)


def add_allowed(directory: str, cert_file: str, name: str | None = None) -> str:
    """Copy another host's public certificate into the allow-list as NAME.key (default: the
    certificate's file name); returns the path written. Refuses a secret certificate (only
    public keys belong there) and a name already taken by another key."""
    ring = load_keys(directory)
    public = read_public(cert_file)
    if _read_cert(cert_file)[1] is not None:
        raise KeysError(f"{cert_file}: expected a public certificate, got a secret one (give "
                        "other hosts host.key, never host.key_secret)")
    name = name or os.path.basename(cert_file).removesuffix(".key")
    if not name or "/" in name or name.startswith("."):
        raise KeysError(f"--name: expected a plain file name, got {name!r}")
    target = os.path.join(ring.allowed_dir, name + ".key")
    if os.path.exists(target) and read_public(target) != public:
        if name + ".key" == HOST_CERT:
            # Every host's certificate is called host.key, and the allow-list holds this
            # host's own under that name: a copied host.key needs a name of its own.
            raise KeysError(f"{target}: is this host's own key; give the other host's "
                            "certificate a name of its own with --name NAME (e.g. its host "
                            "name)")
        raise KeysError(f"{target}: already holds another key named {name!r}; choose another "
                        "--name or remove that file first")
    with open(cert_file, "rb") as src:
        body = src.read()
    tmp = target + ".tmp"
    with open(tmp, "wb") as out:
        out.write(body)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def read_public(path: str) -> bytes:
    """The z85 public key of a certificate file (public or secret), with a clear error."""
    return _read_cert(path)[0]


def _read_cert(path: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeysError(f"{path}: expected a CURVE certificate (zmq.auth format, as `sora "
                        f"keys init` writes), could not read it ({exc})") from None
    if public is None or len(public) != 40:
        raise KeysError(f"{path}: expected a CURVE certificate with a 40-character "
                        "public-key, got none")
    return public, secret


# --- sockets ----------------------------------------------------------------------------------

class _LoggedRefusals:
    """Mixin for zmq.auth authenticators: log every refusal at warning with the peer's
    address and the reason (zmq.auth logs them at debug, without the address)."""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        self._key = msg[6] if len(msg) > 6 else b""
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous"):
        if status_code != b"200":
            key = zmq.utils.z85.encode(self._key).decode() if len(self._key) == 32 else "?"
            reason = status_text.decode("utf-8", "replace")
            if reason == "Unknown key":
                reason = (f"its key {key} is not on the allow-list {self.allowed_dir} "
                          f"(to let it in: `sora keys add {os.path.dirname(self.allowed_dir)} "
                          "ITS_HOST.key --name NAME`, then restart this host's supervisor, "
                          "which reads the allow-list when it starts)")
            log.warning("refused a connection from %s: %s", self._peer, reason)
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


class _ThreadAuth(_LoggedRefusals, ThreadAuthenticator):
    pass


class _AsyncAuth(_LoggedRefusals, AsyncioAuthenticator):
    pass


def start_authenticator(ctx: zmq.Context, ring: KeyRing, use_asyncio: bool = False):
    """Start the ZAP handler that enforces `ring`'s allow-list for every CURVE server socket
    of `ctx` (one per context; stop it with .stop() before the context is terminated)."""
    auth = (_AsyncAuth if use_asyncio else _ThreadAuth)(ctx)
    auth.allowed_dir = ring.allowed_dir
    auth.start()
    auth.configure_curve(domain=ZAP_DOMAIN, location=ring.allowed_dir)
    return auth


# The largest message a CURVE socket takes (ZMQ_MAXMSGSIZE; larger: the connection is
# closed). ZeroMQ buffers a frame whole before the CURVE handshake looks at it, so without a
# bound any process that reaches the port, with no key at all, makes the socket hold as many
# bytes as it sends (measured: a 1 GB "handshake" frame, 300 MB of it sent, grew the server
# by 300 MB). What a peer legitimately sends is far below this: a result (6 MiB) with its
# log tail, a batch of records (a sender keeps at most 32 MiB); a worker's data endpoint
# takes calls, bounded by the host's server.maxBodyBytes (tcp_endpoint.py), and the cluster
# listener a MEMBERS (4 MB).
MAX_MESSAGE_BYTES = 64 << 20


def server_socket(ctx: zmq.Context, kind: int, ring: KeyRing,
                  max_message: int = MAX_MESSAGE_BYTES) -> zmq.Socket:
    """A CURVE server socket (bind it to a tcp endpoint); its context needs an authenticator
    (start_authenticator), or any client with any key would be let in."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message)
    sock.curve_secretkey = ring.secret
    sock.curve_publickey = ring.public
    sock.curve_server = True
    sock.zap_domain = ZAP_DOMAIN.encode()
    return sock


def client_socket(ctx: zmq.Context, kind: int, ring: KeyRing, server_key: bytes,
                  max_message: int = MAX_MESSAGE_BYTES) -> zmq.Socket:
    """A CURVE client socket (connect it to a tcp endpoint) for the server whose z85 public key
    is `server_key`; it retries a refused or lost connection every 1 s, doubling to 8 s. (What
    listens at that address before the handshake proves its key is no one's: bounded too.)"""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message)
    sock.curve_secretkey = ring.secret
    sock.curve_publickey = ring.public
    sock.curve_serverkey = server_key
    sock.setsockopt(zmq.RECONNECT_IVL, CLIENT_RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, CLIENT_RECONNECT_IVL_MAX_MS)
    return sock
