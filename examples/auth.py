"""Three ways to authenticate a WebSocket without a token in the URL (``docs/auth.rst``).

* ``/cookie``: the browser's session cookie, with an origin check (a page of another site
  would send the cookie too);
* ``/first-message``: the handshake is anonymous, the first message carries the token,
  and a client that does not send it in time is closed with 1008;
* ``/database``: the session is looked up in a database without blocking the server,
  through :class:`~spoc_sockets.Deferred` and a thread pool.

Serve it with ``spoc-sockets serve examples.auth:make_router`` (a factory: it creates its
demonstration database).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spoc_sockets import ChannelServer, Connection, Deferred, Reject, Request, Router

#: the site whose pages may open these WebSockets
SITE = "https://app.example.com"


def session_user(database: str, session: str) -> str | None:
    """The user of a session id, or ``None``: a blocking query (run it off the loop)."""
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT user FROM sessions WHERE id = ?", (session,)).fetchone()
    return None if row is None else str(row[0])


class CookieNotes(ChannelServer):
    """The browser sends its cookies with the handshake, whichever page opens it: the
    origin check is what makes a cookie a proof that *your* page is asking."""

    origins = (SITE,)

    def __init__(self, sessions: dict[str, str]) -> None:
        super().__init__()
        self.sessions = sessions

    def authenticate(self, request: Request) -> object:
        user = self.sessions.get(request.cookies.get("session", ""))
        if user is None:
            raise Reject(401, "log in first")
        return user

    def on_connect(self, conn: Connection) -> None:
        conn.send_json({"type": "welcome", "user": conn.user})


class FirstMessageNotes(ChannelServer):
    """``{"type": "auth", "token": ...}`` first, within ``auth_timeout`` seconds."""

    def __init__(self, tokens: dict[str, str], auth_timeout: float = 5.0) -> None:
        super().__init__()
        self.tokens = tokens
        #: seconds a connection may stay anonymous before it is closed with 1008
        self.auth_timeout = auth_timeout
        self._deadlines: dict[Connection, threading.Timer] = {}

    def on_connect(self, conn: Connection) -> None:
        # conn.user is None until the first message proves who it is
        timer = threading.Timer(self.auth_timeout, conn.close, (1008, "authenticate first"))
        timer.daemon = True
        self._deadlines[conn] = timer
        timer.start()

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        if conn.user is not None:
            conn.send_json({"type": "echo", "user": conn.user, "message": message})
            return
        self._stop_deadline(conn)
        user = self.tokens.get(_token(message))
        if user is None:
            conn.close(1008, "invalid credentials")
            return
        conn.user = user
        conn.send_json({"type": "welcome", "user": user})

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self._stop_deadline(conn)

    def _stop_deadline(self, conn: Connection) -> None:
        timer = self._deadlines.pop(conn, None)
        if timer is not None:
            timer.cancel()


def _token(message: str | bytes) -> str:
    try:
        parsed = json.loads(message)
    except ValueError:
        return ""
    if not isinstance(parsed, dict) or parsed.get("type") != "auth":
        return ""
    token = parsed.get("token")
    return token if isinstance(token, str) else ""


class DatabaseNotes(ChannelServer):
    """The session cookie checked against a database: ``authenticate`` returns a
    :class:`Deferred` at once, and a pool thread decides when the query returns."""

    origins = (SITE,)

    def __init__(self, database: str, pool: ThreadPoolExecutor) -> None:
        super().__init__()
        self.database = database
        self.pool = pool

    def authenticate(self, request: Request) -> object:
        decision = Deferred()
        session = request.cookies.get("session", "")
        self.pool.submit(self._check, session, decision)
        return decision

    def _check(self, session: str, decision: Deferred) -> None:
        try:
            user = session_user(self.database, session)
        except sqlite3.Error:
            decision.reject(503, "try again later")
            return
        if user is None:
            decision.reject(401, "log in first")
        else:
            decision.accept(user)

    def on_connect(self, conn: Connection) -> None:
        conn.send_json({"type": "welcome", "user": conn.user})


def create_database(path: Path, sessions: dict[str, str]) -> str:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, user TEXT)")
        db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?)", sessions.items())
    return str(path)


def make_router(directory: Path | None = None, auth_timeout: float = 5.0) -> Router:
    """The three channels, with demonstration credentials (session ``s-ada``, token
    ``t-grace``) and a database in ``directory`` (a temporary one by default)."""
    where = directory or Path(tempfile.mkdtemp(prefix="spoc-auth-"))
    sessions = {"s-ada": "ada"}
    router = Router()
    router.add("/cookie", CookieNotes(sessions))
    router.add("/first-message", FirstMessageNotes({"t-grace": "grace"}, auth_timeout))
    database = create_database(where / "sessions.sqlite3", sessions)
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="auth-db")
    router.add("/database", DatabaseNotes(database, pool))
    return router
