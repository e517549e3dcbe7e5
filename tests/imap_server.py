"""A throwaway Dovecot (Debian's dovecot-imapd/-lmtpd) for the reply tests: one per session.

Own config in a mkdtemp folder (0755: the auth process runs as `dovecot` and must read the
passwd file), passwd-file users, Maildir, free ports for IMAP (STARTTLS offered), IMAPS and
LMTP, a certificate for 127.0.0.1 signed by a throwaway CA (`ca_file`), `dovecot -F`
in the foreground, stopped at the end (/work/shared/NOTES.md, "A real IMAP server").
Mail arrives as an MTA delivers it (LMTP) or by IMAP APPEND.

XOAUTH2: a second passdb checks bearer tokens with a tiny OAuth2 introspection endpoint
(RFC 7662, `http.server` in a thread on a free port) that knows the tokens `oauth_user` gave.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from imapclient import IMAPClient

from tests.smtp_sink import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
POOL = 200  # mailbox users made at the start, handed out one a test

CONFIG = """\
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = dovecot-test-{imap}
log_path = {dir}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = yes
ssl_cert = <{dir}/tls/cert.pem
ssl_key = <{dir}/tls/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
auth_failure_delay = 0
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {login}
first_valid_uid = {first_uid}
mail_location = maildir:~/Maildir
mail_uid = {mail_user}
mail_gid = {mail_group}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {dir}/oauth2.conf.ext
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {dir}/passwd
  default_fields = home={dir}/mail/%d/%n
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
"""

OAUTH2 = """\
introspection_mode = post
introspection_url = http://127.0.0.1:{port}/introspect
username_attribute = username
active_attribute = active
active_value = true
"""


class Introspection(ThreadingHTTPServer):
    """RFC 7662 token introspection for Dovecot's oauth2 passdb: active only for known tokens."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _IntrospectionHandler)
        self.tokens: dict[str, str] = {}  # token -> user
        self.asked: list[str] = []  # tokens Dovecot asked about
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _IntrospectionHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        token = (parse_qs(body).get("token") or [""])[0]
        self.server.asked.append(token)
        user = self.server.tokens.get(token)
        answer = {"active": True, "username": user} if user else {"active": False}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # quiet
        pass


def make_certificates(folder: Path) -> Path:
    """A throwaway CA and a certificate for 127.0.0.1 it signed (key readable by root only);
    returns the CA file a client must trust."""
    folder.mkdir(mode=0o755)
    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SendOnce test CA")])
    host = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])

    def signed(builder: x509.CertificateBuilder) -> x509.Certificate:
        return (builder.issuer_name(ca_name).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=2))
                .sign(ca_key, hashes.SHA256()))

    ca = signed(x509.CertificateBuilder().subject_name(ca_name).public_key(ca_key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    cert = signed(x509.CertificateBuilder().subject_name(host).public_key(key.public_key()).add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    private = folder / "key.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    return folder / "ca.pem"


def _identity() -> dict[str, object]:
    """Who Dovecot's processes run as: Debian's users as root, ourselves otherwise."""
    if os.getuid() == 0:
        return {"internal": "dovecot", "internal_group": "dovecot", "login": "dovenull",
                "first_uid": 65534, "mail_user": "nobody", "mail_group": "nogroup"}
    me = pwd.getpwuid(os.getuid())
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout.strip()
    return {"internal": me.pw_name, "internal_group": group, "login": me.pw_name,
            "first_uid": os.getuid(), "mail_user": me.pw_name, "mail_group": group}


class Dovecot:
    """One running Dovecot: users, mail delivery, flags read read-only."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sendonce-dovecot-"))
        self.dir.chmod(0o755)
        self.proc: subprocess.Popen | None = None
        self.imap_port = self.imaps_port = self.lmtp_port = 0
        self.ca_file: Path | None = None  # trust it (SSL_CERT_FILE) to check the server's certificate
        self.users: dict[str, str] = {}  # handed out
        self._pool: dict[str, str] = {}
        self.introspection: Introspection | None = None

    def start(self, attempts: int = 5) -> Dovecot:
        """Start in the foreground on free ports (retried on a port clash); wait for `* OK`."""
        self._pool = {f"sales{n}@firma.pl": f"secret-{n}" for n in range(1, POOL + 1)}
        passwd = self.dir / "passwd"
        passwd.write_text("".join(f"{user}:{secret}::::::\n" for user, secret in self._pool.items()))
        passwd.chmod(0o644)
        self.ca_file = make_certificates(self.dir / "tls")
        self.introspection = Introspection()
        oauth2 = self.dir / "oauth2.conf.ext"
        oauth2.write_text(OAUTH2.format(port=self.introspection.server_address[1]))
        oauth2.chmod(0o644)
        mail = self.dir / "mail"
        mail.mkdir(exist_ok=True)
        if os.getuid() == 0:
            shutil.chown(mail, "nobody", "nogroup")
        for _ in range(attempts):
            self.imap_port, self.imaps_port, self.lmtp_port = free_port(), free_port(), free_port()
            conf = self.dir / "dovecot.conf"
            conf.write_text(CONFIG.format(dir=self.dir, imap=self.imap_port, imaps=self.imaps_port,
                                          lmtp=self.lmtp_port, **_identity()))
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
            if self._ready():
                return self
            self.stop()
        log = self.dir / "dovecot.log"
        raise RuntimeError(f"dovecot did not start: {log.read_text() if log.exists() else ''}")

    def _ready(self, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.imap_port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """SIGTERM, wait (about a second), and forget the process."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def cleanup(self) -> None:
        """Stop, the introspection endpoint too, and remove the folder."""
        self.stop()
        if self.introspection is not None:
            self.introspection.shutdown()
            self.introspection.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def new_user(self) -> tuple[str, str]:
        """A mailbox user of its own (address, password) for one test."""
        # Users are written before the start: Dovecot re-reads a changed passwd-file at
        # most once a second, so a user added later may not exist yet for a while.
        address = f"sales{len(self.users) + 1}@firma.pl"
        if address not in self._pool:
            raise RuntimeError(f"more than {POOL} users asked for: raise POOL")
        self.users[address] = self._pool[address]
        return address, self.users[address]

    def oauth_user(self) -> tuple[str, str]:
        """A mailbox user of its own that logs in with XOAUTH2 (address, bearer token)."""
        address, _password = self.new_user()
        token = f"ya29.test-token-{address}"
        self.introspection.tokens[token] = address
        return address, token

    def deliver(self, to: str, message: bytes, sender: str = "mta@example.net") -> None:
        """Deliver as an MTA would: LMTP to INBOX."""
        with smtplib.LMTP("127.0.0.1", self.lmtp_port) as lmtp:
            lmtp.sendmail(sender, [to], message)

    def client(self, user: str) -> IMAPClient:
        """A logged-in IMAP client (the test's own, not the reader's)."""
        client = IMAPClient("127.0.0.1", port=self.imap_port, ssl=False, timeout=10)
        client.login(user, self.users[user])
        return client

    def append(self, user: str, message: bytes, folder: str = "INBOX", flags: tuple = (),
               received: datetime | None = None) -> None:
        """APPEND a message (creating the folder if needed), with flags and an INTERNALDATE."""
        with self.client(user) as imap:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)
            imap.append(folder, message, flags=flags, msg_time=received)

    def snapshot(self, user: str) -> dict[str, object]:
        """Every folder's UIDVALIDITY and every message's (uid, flags, size), read read-only."""
        found: dict[str, object] = {}
        with self.client(user) as imap:
            for _flags, _sep, name in imap.list_folders():
                status = imap.select_folder(name, readonly=True)
                data = imap.fetch(imap.search("ALL"), ["FLAGS", "RFC822.SIZE"]) if status[b"EXISTS"] else {}
                found[name] = (status[b"UIDVALIDITY"],
                               sorted((uid, tuple(sorted(d[b"FLAGS"])), d[b"RFC822.SIZE"])
                                      for uid, d in data.items()))
        return found
