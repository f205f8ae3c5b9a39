"""The embedded stack's Airflow API server writes to its SQLite metadata without "database is locked".

On SQLite in WAL mode a transaction that has read cannot start writing once another process (the scheduler,
the DAG processor) has committed since its read: SQLite answers "database is locked" at once, without
waiting for the lock. Airflow maps that error to a 503 on the backfill endpoints ("Backfill creation is not
supported on SQLite under concurrent access"), so "Run Backfill" in the UI failed now and then.

Python's sqlite3 opens a transaction only at its first write, so the reads before it are not the problem. A
SAVEPOINT outside a transaction is: SQLite opens a deferred one, and Airflow creates each backfill run inside
`session.begin_nested()`, reading before it writes. During a write request such a transaction therefore
begins with BEGIN IMMEDIATE, which takes the write lock first and waits for it, and is committed when the
savepoint ends (its RELEASE, as SQLite commits the one a SAVEPOINT opened, or a ROLLBACK TO it, which leaves
the transaction empty): the lock is held for one run, not for the whole backfill. A request still answered
503 "Database is locked" (a path this does not cover) is replayed: Airflow has rolled it back or, for a
backfill, deleted what it had created. On PostgreSQL (docker-compose.yaml) the plugin adds nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any
from weakref import WeakKeyDictionary

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]

LOCKED = b"database is locked"
READS = frozenset({"GET", "HEAD", "OPTIONS"})
# set while the API server answers a write request; FastAPI's worker threads inherit it
WRITE_REQUEST: ContextVar[bool] = ContextVar("lambdaflow_write_request", default=False)
SAVEPOINT = "SAVEPOINT "
ENDS = ("RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")
# the savepoint each connection's immediate transaction was opened for (its savepoint names are unique)
_OPENED_FOR: WeakKeyDictionary[Connection, str] = WeakKeyDictionary()


class RetryLockedWrites:
    """ASGI middleware: marks a write request (WRITE_REQUEST); one answered 503 "Database is locked" runs
    again, with a doubling wait from `first_wait_s` up to `longest_wait_s`, for up to `budget_s`; the client
    sees the last answer."""

    def __init__(
        self, app: ASGIApp, budget_s: float = 15.0, first_wait_s: float = 0.05, longest_wait_s: float = 1.0
    ) -> None:
        self.app = app
        listen_for_savepoints()
        self.budget_s = budget_s
        self.first_wait_s = first_wait_s
        self.longest_wait_s = longest_wait_s

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS:
            await self.app(scope, receive, send)
            return
        token = WRITE_REQUEST.set(True)
        try:
            await self._answer_write(scope, receive, send)
        finally:
            WRITE_REQUEST.reset(token)

    async def _answer_write(self, scope: Message, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget_s
        wait_s = self.first_wait_s
        while True:
            answer = await self._answer(scope, bytes(body), receive)
            if not _locked(answer) or loop.time() + wait_s > deadline:
                break
            # jittered: a transaction slower than another process's commit interval would meet its commits
            # in step if it always came back after the same wait
            await asyncio.sleep(wait_s * random.uniform(0.5, 1.5))
            wait_s = min(2 * wait_s, self.longest_wait_s)
        for message in answer:
            await send(message)

    async def _answer(self, scope: Message, body: bytes, receive: Receive) -> list[Message]:
        """The app's answer to the request with `body`, held back so that it can be discarded."""
        answer: list[Message] = []
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:  # the app reads on only to see the client leave
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def hold(message: Message) -> None:
            answer.append(message)

        await self.app(scope, replay, hold)
        return answer


def listen_for_savepoints() -> None:
    """Open and commit the transactions of SAVEPOINTs in this process (the API server)."""
    if not event.contains(Engine, "before_cursor_execute", begin_immediately):
        event.listen(Engine, "before_cursor_execute", begin_immediately)
        event.listen(Engine, "after_cursor_execute", commit_at_its_end)


def begin_immediately(connection: Connection, cursor: Any, statement: str, *_: Any) -> None:
    """Before a SAVEPOINT that would open a deferred transaction in a write request, open an immediate one."""
    on_pysqlite = connection.dialect.name == "sqlite" and connection.dialect.driver == "pysqlite"
    if not (WRITE_REQUEST.get() and on_pysqlite and statement.startswith(SAVEPOINT)):
        return
    dbapi_connection = connection.connection.dbapi_connection
    if not dbapi_connection.in_transaction:
        dbapi_connection.execute("BEGIN IMMEDIATE")
        _OPENED_FOR[connection] = statement.removeprefix(SAVEPOINT)


def commit_at_its_end(connection: Connection, cursor: Any, statement: str, *_: Any) -> None:
    """After the end of a savepoint whose transaction begin_immediately opened, commit that transaction."""
    opened_for = _OPENED_FOR.get(connection)
    if opened_for is not None and any(statement == end + opened_for for end in ENDS):
        del _OPENED_FOR[connection]
        connection.connection.dbapi_connection.commit()


def _locked(answer: list[Message]) -> bool:
    """Whether the answer is the API server's 503 for a database SQLite reported locked."""
    if not answer or answer[0].get("status") != 503:
        return False
    return LOCKED in b"".join(message.get("body", b"") for message in answer[1:]).lower()


def _on_sqlite() -> bool:
    return conf.get("database", "sql_alchemy_conn").startswith("sqlite")


class LockedWritesPlugin(AirflowPlugin):
    name = "lambdaflow_locked_writes"
    fastapi_root_middlewares = (
        [{"middleware": RetryLockedWrites, "args": [], "kwargs": {}, "name": "Retry writes SQLite refused"}]
        if _on_sqlite()
        else []
    )
