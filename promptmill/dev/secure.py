"""TLS and SCRAM for ``promptmill dev up --secure``: a broker only reachable over SASL_SSL.

At each start of a secure broker, everything is generated afresh under
``<state_dir>/kafka/secure`` (mode 0700) with the ``openssl`` command line:

* ``ca.pem``: a throw-away certificate authority (its key is deleted once it signed);
  clients verify the broker against it (``KAFKA_SSL_CAFILE``);
* ``broker.pem`` (0600): the broker's unencrypted PKCS#8 key, its certificate for
  ``localhost`` and ``127.0.0.1`` and the CA, read as a ``PEM`` keystore by the broker;
* ``admin.password`` and ``client.password`` (0600): random passwords of two SCRAM-SHA-512
  users, ``promptmill-admin`` (the broker's own inter-broker logins) and ``promptmill``
  (every client: workers, CLI, tests).

The SCRAM credentials are written into the metadata log when the storage is formatted
(``StorageTool format --add-scram``), as salt and salted password, so that no password
appears on a command line. The broker's client listener is SASL_SSL only; the controller
listener stays PLAINTEXT on loopback (it serves KRaft, not produce or fetch). No authorizer
runs: every authenticated user may do everything.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from promptmill.dev.processes import StackError

SECURITY_PROTOCOL = "SASL_SSL"
SASL_MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "promptmill-admin"
CLIENT_USER = "promptmill"
SCRAM_ITERATIONS = 8192
CERT_DAYS = 30

_CA_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = promptmill local Kafka CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

_BROKER_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = localhost
[v3_broker]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_LISTENERS = """\
listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms={mechanism}
sasl.mechanism.inter.broker.protocol={mechanism}
listener.name.sasl_ssl.{jaas_mechanism}.sasl.jaas.config={jaas}
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
ssl.client.auth=none
"""


class KafkaSecurity(BaseModel):
    """How clients authenticate to a secure local broker, as recorded in ``stack.json``.

    The password itself stays in ``password_file`` (0600), never in the stack file.
    """

    model_config = ConfigDict(frozen=True)

    protocol: str = SECURITY_PROTOCOL
    mechanism: str = SASL_MECHANISM
    username: str
    password_file: Path
    ca_file: Path

    def password(self) -> str:
        """The client user's password, read from its file."""
        try:
            return self.password_file.read_text().strip()
        except OSError as exc:
            raise StackError(f"cannot read the Kafka password file: {exc}") from None


@dataclass(frozen=True)
class SecureMaterial:
    """What a secure broker is started with (all files under ``home``)."""

    home: Path
    ca_file: Path
    keystore: Path
    admin_password_file: Path
    client_password_file: Path

    def client_security(self) -> KafkaSecurity:
        """The record clients use: the client user, its password file and the CA."""
        return KafkaSecurity(
            username=CLIENT_USER, password_file=self.client_password_file, ca_file=self.ca_file
        )

    def scram_arguments(self) -> list[str]:
        """``--add-scram`` arguments of ``StorageTool format`` for both users."""
        users = [(ADMIN_USER, self.admin_password_file), (CLIENT_USER, self.client_password_file)]
        args: list[str] = []
        for user, password_file in users:
            args += ["--add-scram", scram_credential(user, password_file.read_text().strip())]
        return args

    def render_listeners(self, port: int, controller_port: int) -> str:
        """The listener lines of ``server.properties``: SASL_SSL for clients and brokers."""
        password = self.admin_password_file.read_text().strip()
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN_USER}" password="{password}";'
        )
        return _LISTENERS.format(
            port=port,
            controller_port=controller_port,
            mechanism=SASL_MECHANISM,
            jaas_mechanism=SASL_MECHANISM.lower(),
            jaas=jaas,
            keystore=self.keystore,
            ca=self.ca_file,
        )


def scram_credential(user: str, password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """``SCRAM-SHA-512=[name=..,salt=..,saltedpassword=..,iterations=..]`` for ``--add-scram``.

    The salted password is SCRAM's ``Hi(password, salt, i)``, i.e. PBKDF2-HMAC-SHA-512.
    """
    salt = secrets.token_bytes(32)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return (
        f'{SASL_MECHANISM}=[name={user},salt="{b64(salt).decode()}",'
        f'saltedpassword="{b64(salted).decode()}",iterations={iterations}]'
    )


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (0600) from the first byte."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _openssl(args: list[str], cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError("openssl not found (--secure needs it); `apt-get install openssl`")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-10:])
        raise StackError(f"openssl {args[0]} failed:\n{tail}")


def generate(home: Path) -> SecureMaterial:
    """Generate a fresh CA, broker certificate and SCRAM passwords under ``home``.

    Anything an earlier start left there is replaced.
    """
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True, mode=0o700)
    (home / "ca.cnf").write_text(_CA_CONFIG)
    (home / "broker.cnf").write_text(_BROKER_CONFIG)
    days = ["-days", str(CERT_DAYS)]
    for key in ("ca.key", "broker.key"):
        _openssl(
            ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key],
            home,
        )
    _openssl(
        ["req", "-x509", "-new", "-key", "ca.key", "-config", "ca.cnf", *days, "-out", "ca.pem"],
        home,
    )
    _openssl(
        ["req", "-new", "-key", "broker.key", "-config", "broker.cnf", "-out", "broker.csr"], home
    )
    sign = ["x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", *days]
    sign += ["-set_serial", str(secrets.randbits(63)), "-extfile", "broker.cnf"]
    _openssl([*sign, "-extensions", "v3_broker", "-out", "broker.crt"], home)
    keystore = home / "broker.pem"
    parts = [home / name for name in ("broker.key", "broker.crt", "ca.pem")]
    _write_private(keystore, "".join(part.read_text() for part in parts))
    for name in ("ca.key", "broker.key", "broker.csr", "broker.crt", "ca.cnf", "broker.cnf"):
        (home / name).unlink()
    admin, client = home / "admin.password", home / "client.password"
    _write_private(admin, secrets.token_urlsafe(24) + "\n")
    _write_private(client, secrets.token_urlsafe(24) + "\n")
    return SecureMaterial(home, home / "ca.pem", keystore, admin, client)
