"""Admin accounts: the password policy, and the changes that end a user's sessions.

A user's `session_generation` is part of every session cookie made for them (web/auth.py
checks it on each request): bumping it ends every session of that user at once. Logging
out, changing the password and "log out everywhere" bump it; so do disabling and removing.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, func, select, update

from core.leads import check_email
from models import User
from storage.database import write_session

MIN_LENGTH = 12
MAX_LENGTH = 1024  # longer adds nothing and costs the KDF more
COMMON = frozenset(
    line.strip().lower() for line in (Path(__file__).parent / "data" / "common_passwords.txt")
    .read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#"))


class AccountError(ValueError):
    """A refused account change: `code` names the rule (pages translate it), str() is English."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_password(password: str, email: str = "") -> None:
    """Raise AccountError unless the password is long enough, not common and not the address."""
    folded = password.strip().lower()
    if len(password) < MIN_LENGTH:
        raise AccountError("too_short", f"the password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise AccountError("too_long", f"the password may have at most {MAX_LENGTH} characters")
    local = email.strip().lower().partition("@")[0]
    if folded in COMMON or len(set(folded)) <= 2 or (local and local in folded and len(local) >= 4):
        raise AccountError("common", "the password is too easy to guess (a common password, a repeated "
                                     "character or the address itself)")


def _address(raw: str) -> str:
    try:
        return check_email(raw)
    except ValueError as exc:
        raise AccountError("bad_email", f"{raw!r} is not an e-mail address") from exc


def create_user(engine: Engine, email: str, password: str) -> int:
    """Add an (active) admin; refuses a taken address or a weak password. Returns the id."""
    email = _address(email)
    check_password(password, email)
    user = User(email=email)
    user.set_password(password)  # scrypt before the write lock (it takes 0.1-0.4 s)
    with write_session(engine) as session:
        if session.scalar(select(User.id).where(User.email == email)) is not None:
            raise AccountError("exists", f"user {email} exists already; "
                                         "change its password with set-password")
        session.add(user)
        session.flush()
        return user.id


def user_id_of(engine: Engine, email: str) -> int:
    """The id of the user with this address; AccountError if there is none."""
    with engine.connect() as conn:
        found = conn.execute(select(User.id).where(User.email == email.strip().lower())).scalar()
    if found is None:
        raise AccountError("unknown", f"no user {email.strip().lower()}")
    return found


def set_password(engine: Engine, user_id: int, password: str) -> None:
    """Replace a user's password (policy checked) and end every session they have."""
    with engine.connect() as conn:
        email = conn.execute(select(User.email).where(User.id == user_id)).scalar() or ""
    check_password(password, email)
    hashed = User()
    hashed.set_password(password)
    _update(engine, user_id, password_hash=hashed.password_hash, failed_logins=0, locked_until=None,
            session_generation=User.session_generation + 1)


def change_email(engine: Engine, user_id: int, new_email: str) -> str:
    """Give a user another login address (must be free); returns it normalized."""
    email = _address(new_email)
    with write_session(engine) as session:
        if session.scalar(select(User.id).where(User.email == email, User.id != user_id)) is not None:
            raise AccountError("exists", f"user {email} exists already")
        session.execute(update(User).where(User.id == user_id).values(email=email))
    return email


def end_sessions(engine: Engine, user_id: int) -> None:
    """Log a user out everywhere: every cookie made for them so far stops working."""
    _update(engine, user_id, session_generation=User.session_generation + 1)


def set_disabled(engine: Engine, user_id: int, disabled: bool) -> None:
    """Disable (ends their sessions, refuses their logins) or enable a user; never the last active one."""
    with write_session(engine) as session:
        if not disabled:
            session.execute(update(User).where(User.id == user_id).values(disabled=False))
            return
        _refuse_last_active(session, user_id, "disable")
        session.execute(update(User).where(User.id == user_id).values(
            disabled=True, session_generation=User.session_generation + 1))


def remove_user(engine: Engine, user_id: int) -> None:
    """Delete a user; never the last active one (nobody could log in any more)."""
    with write_session(engine) as session:
        _refuse_last_active(session, user_id, "remove")
        session.delete(session.get(User, user_id))


def _refuse_last_active(session, user_id: int, action: str) -> None:
    # Checked inside the write transaction: two admins disabling each other at the same
    # moment are serialized by BEGIN IMMEDIATE, and the second one sees the first's change.
    others = session.scalar(select(func.count()).select_from(User).where(User.id != user_id,
                                                                         User.disabled.is_(False)))
    if not others:
        raise AccountError("last_admin", f"cannot {action} the last active user: nobody could log in")


def _update(engine: Engine, user_id: int, **values) -> None:
    with write_session(engine) as session:
        if session.execute(update(User).where(User.id == user_id).values(**values)).rowcount != 1:
            raise AccountError("unknown", f"no user {user_id}")
