"""Who is using the app: Hugging Face OAuth on a Space, a password file offline, or a typed name.

Three modes, fixed at start:

- ``oauth``: running on a Space without an auth file. Visitors log in with the Hugging
  Face button (the Space's README sets ``hf_oauth: true``); their Hub username is their name.
- ``password``: ``--auth-file`` given. Gradio asks for a name and password before showing
  the app (and ``gradio_client.Client(url, auth=(name, password))`` for the API); the
  log-in name is the annotator name.
- ``name``: neither. Annotators type a display name; nothing checks it, so this mode is
  for a trusted machine (admin actions then trust the typed name too).

Auth file format: one ``name:password`` per line (the name may not contain ``:``);
blank lines and lines starting with ``#`` are ignored. Keep the file out of git.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path

from annotate.validation import InvalidInput, check_name


class IdentityError(ValueError):
    """No usable annotator name, or a name without the right to do what it asked."""


def read_auth_file(path: str | Path) -> dict[str, str]:
    """Name -> password from an auth file; a malformed line raises ``IdentityError`` naming it."""
    users: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, password = line.partition(":")
        where = f"{path}, line {number}"
        if not colon or not password:
            raise IdentityError(f"{where}: expected 'name:password'")
        try:
            name = check_name(name.strip())
        except InvalidInput as err:
            raise IdentityError(f"{where}: {err}") from None
        if name in users:
            raise IdentityError(f"{where}: {name!r} is listed twice")
        users[name] = password
    if not users:
        raise IdentityError(f"{path} lists no 'name:password' line: nobody could log in")
    return users


def password_check(users: dict[str, str]) -> Callable[[str, str], bool]:
    """The ``auth`` callable for ``launch``: constant-time password comparison."""

    def check(name: str, password: str) -> bool:
        expected = users.get(name)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    return check


def resolve_name(mode: str, *, typed: str | None, username: str | None, oauth_username: str | None) -> str:
    """The annotator's name for this request, per the identity mode (see the module docstring)."""
    if mode == "oauth":
        if not oauth_username:
            raise IdentityError("log in with your Hugging Face account first (button at the top)")
        return oauth_username
    if mode == "password":
        if not username:
            raise IdentityError("this app requires logging in; your session has no user name")
        return username
    try:
        typed = "" if typed is None else typed
        return check_name(typed.strip() if isinstance(typed, str) else typed)
    except InvalidInput as err:
        raise IdentityError(f"type your annotator name first ({err})") from None
