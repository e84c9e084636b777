"""``spoc-sockets serve package.module:router``: serve any router, and :func:`run` for scripts.

``spoc-sockets`` with no subcommand (or ``spoc-sockets demo ...``) serves the demo, as
``python -m spoc_sockets`` does. SIGTERM and SIGINT shut down gracefully: every client is
closed with 1001 and the server drains before the process exits (status 0).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import logging
import os
import select
import signal
import socket
import ssl as _ssl
import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from types import FrameType

from .errors import UsageError
from .router import Router

__all__ = ["ADAPTERS", "load_router", "main", "run"]

logger = logging.getLogger("spoc_sockets.cli")

#: the adapters :func:`run` and ``spoc-sockets serve --adapter`` know
ADAPTERS = ("asyncio", "trio", "threads")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: seconds the parent of ``workers`` processes waits for all of them to listen
WORKERS_STARTUP_TIMEOUT = 60.0

OnListen = Callable[[int], None]


# -- serving in this process ----------------------------------------------------------


def _serve_asyncio(
    router: Router,
    host: str,
    port: int,
    *,
    ssl: _ssl.SSLContext | None,
    reuse_port: bool,
    on_listen: OnListen,
) -> None:
    import asyncio

    from .asyncio import serve

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError):  # no loop signal handlers there
                loop.add_signal_handler(signum, stop.set)
        async with serve(router, host, port, ssl=ssl, reuse_port=reuse_port) as server:
            on_listen(server.port)
            forever = asyncio.ensure_future(server.serve_forever())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait((forever, stopped), return_when=asyncio.FIRST_COMPLETED)
            forever.cancel()
            stopped.cancel()
        # leaving the block closed the server gracefully: 1001 to every client

    asyncio.run(main())


def _serve_trio(
    router: Router,
    host: str,
    port: int,
    *,
    ssl: _ssl.SSLContext | None,
    reuse_port: bool,
    on_listen: OnListen,
) -> None:
    try:
        import trio
    except ImportError:
        raise UsageError("adapter='trio' needs trio: pip install 'spoc-sockets[trio]'") from None

    from .trio import serve

    async def main() -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:
                start = partial(serve, ssl=ssl, reuse_port=reuse_port)
                server = await nursery.start(start, router, host, port)
                on_listen(server.port)
                async for _ in signals:
                    nursery.cancel_scope.cancel()  # cancellation = graceful shutdown
                    break

    trio.run(main)


def _serve_threads(
    router: Router,
    host: str,
    port: int,
    *,
    ssl: _ssl.SSLContext | None,
    reuse_port: bool,
    on_listen: OnListen,
) -> None:
    from .threads import serve

    with serve(router, host, port, ssl=ssl, reuse_port=reuse_port) as server:

        def stop(signum: int, frame: FrameType | None) -> None:
            # shutdown() waits for the loop, which runs in this (the main) thread
            threading.Thread(target=server.shutdown, daemon=True).start()

        for signum in STOP_SIGNALS:
            signal.signal(signum, stop)
        on_listen(server.port)
        server.serve_forever()


SERVERS = {"asyncio": _serve_asyncio, "trio": _serve_trio, "threads": _serve_threads}


# -- several worker processes on one port ---------------------------------------------


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with ``SO_REUSEPORT``: it holds a
    free port for ``port=0`` while the workers bind the same one, and takes no clients."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _exit_status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code  # killed by a signal: 128 + its number


def _worker(serve: Callable[[OnListen], None], ready: int) -> None:
    """The body of a forked worker: serve, tell the parent once listening (or why it
    cannot serve), never return."""

    def listening(port: int) -> None:
        os.write(ready, b".")

    status = 0
    try:
        serve(listening)
    except UsageError as exc:  # reported once, by the parent
        message = " ".join(str(exc).split())[:1000]  # one line, one atomic pipe write
        os.write(ready, b"!" + message.encode() + b"\n")
        status = 2
    except BaseException:  # a worker never returns into the parent's code
        logger.exception("worker %d failed", os.getpid())
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


class _Startup:
    """What the workers report through a pipe while they start: ``.`` once listening,
    or ``!`` and the message of the :class:`UsageError` that stopped them, and a newline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.listening = 0
        self.error: str | None = None
        self._buffer = b""

    def read(self, timeout: float) -> None:
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if readable:
            self._buffer += os.read(self.fd, 4096)
        while self._buffer[:1] == b"." or b"\n" in self._buffer:
            if self._buffer[:1] == b".":
                self.listening += 1
                self._buffer = self._buffer[1:]
            else:
                message, _, self._buffer = self._buffer[1:].partition(b"\n")
                self.error = self.error or message.decode(errors="replace")


def _run_workers(
    serve: Callable[[int, OnListen], None], workers: int, host: str, port: int, on_listen: OnListen
) -> int:
    """Fork ``workers`` processes serving one port; forward SIGTERM/SIGINT to them; return
    once all have exited: 0 if they all stopped cleanly, else the first failure's status.
    A :class:`UsageError` that stopped the workers is raised again here."""
    reserved = _reserve_port(host, port)
    port = reserved.getsockname()[1]
    ready_r, ready_w = os.pipe()
    startup = _Startup(ready_r)
    children: dict[int, int | None] = {}  # pid -> exit status, None while running
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid, status in children.items():
            if status is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
    try:
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                reserved.close()
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
                _worker(lambda listening: serve(port, listening), ready_w)
            children[pid] = None
        os.close(ready_w)
        if _wait_ready(startup, workers, children):
            if not stopping:
                on_listen(port)
        else:
            stopping = True
            forward(signal.SIGTERM, None)
        reserved.close()
        while any(status is None for status in children.values()):
            pid, wait_status = os.wait()
            children[pid] = _exit_status(wait_status)
            if not stopping:
                logger.warning("worker %d exited with status %d", pid, children[pid])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(ready_r)
        reserved.close()
    if startup.error is not None:
        raise UsageError(startup.error)
    return next((status for status in children.values() if status), 0)


def _wait_ready(startup: _Startup, workers: int, children: dict[int, int | None]) -> bool:
    """Wait until every worker listens (True), or one has failed or exited first (False)."""
    while startup.listening < workers and startup.error is None:
        startup.read(0.1)
        for pid in [pid for pid, status in children.items() if status is None]:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                children[pid] = _exit_status(wait_status)
                startup.read(0)  # what it wrote before exiting
                return False
    return startup.error is None


# -- the function ----------------------------------------------------------------------


def _shared_state_warning(router: Router) -> str | None:
    from .channels.brokers.memory import MemoryBroker
    from .channels.chat import ChatServer
    from .channels.stream import StreamServer

    local = sorted(
        path
        for path, channel in router.channels.items()
        if (isinstance(channel, ChatServer) and isinstance(channel.broker, MemoryBroker))
        or isinstance(channel, StreamServer)
    )
    if not local:
        return None
    return (
        f"each worker process has its own rooms and streams for {', '.join(local)}: clients "
        "of different workers do not see each other. Give ChatServer a shared broker "
        "(broker=spoc_sockets.channels.brokers.redis.RedisBroker(url), see the docs' "
        '"Scale out on Redis"), and serve streams with workers=1 (a stream\'s publisher and '
        "viewers must meet in one process)"
    )


def _validate(adapter: object, host: object, port: object, ssl: object, workers: object) -> None:
    if adapter not in ADAPTERS:
        raise UsageError(f"adapter must be one of {', '.join(ADAPTERS)}, not {adapter!r}")
    if not isinstance(host, str) or not host:
        raise UsageError(f"host must be a non-empty str, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UsageError(f"port must be an int from 0 to 65535, not {port!r}")
    if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
        raise UsageError(f"ssl must be an ssl.SSLContext or None, not {ssl!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be an int of at least 1, not {workers!r}")
    if workers > 1 and not (hasattr(os, "fork") and hasattr(socket, "SO_REUSEPORT")):
        raise UsageError(
            f"workers={workers} needs os.fork and SO_REUSEPORT; this system lacks them"
        )


def log_level_number(value: object) -> int:
    """The :mod:`logging` level named (``"INFO"``, ``"debug"``) or numbered by ``value``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    level = logging.getLevelName(value.upper()) if isinstance(value, str) else None
    if not isinstance(level, int):
        raise UsageError(f"log_level must be a logging level (INFO, DEBUG...), not {value!r}")
    return level


def run(
    router: Router,
    *,
    adapter: str = "asyncio",
    host: str = "127.0.0.1",
    port: int = 8765,
    ssl: _ssl.SSLContext | None = None,
    workers: int = 1,
    log_level: int | str | None = None,
    on_listen: OnListen | None = None,
) -> None:
    """Serve ``router`` until SIGTERM or SIGINT, then shut down gracefully: new handshakes
    get 503, every client is closed with 1001, and ``run`` returns once all are gone.

    :param adapter: ``"asyncio"`` (default), ``"trio"`` or ``"threads"``.
    :param host: the address to listen on (default ``127.0.0.1``).
    :param port: the port (default 8765; 0: any free port, reported to ``on_listen``).
    :param ssl: a server-side :class:`ssl.SSLContext` to serve ``wss://`` (default ``None``).
    :param workers: processes serving the port together through ``SO_REUSEPORT`` (default
        1: this process). With more, ``run`` forks them (``router`` is inherited), forwards
        SIGTERM and SIGINT to them, and raises :class:`SystemExit` with the status of a
        worker that failed. Each worker has its own connections and channel state, so the
        built-in channels then need a shared broker: a warning says so.
    :param log_level: when given, configure :mod:`logging` at this level (a name such as
        ``"INFO"`` or a number); ``None`` (default) leaves logging as the application set it.
    :param on_listen: called with the port once listening (with ``workers``: once all
        listen, in the parent).

    Must be called from the main thread (it installs signal handlers). A
    :class:`~spoc_sockets.UsageError` (a bad option, a refused hook) is raised before
    any client is served.
    """
    _validate(adapter, host, port, ssl, workers)
    if not isinstance(router, Router):
        raise UsageError(f"run() serves a spoc_sockets.Router, not {type(router).__name__}")
    if log_level is not None:
        level = log_level_number(log_level)
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("spoc_sockets").setLevel(level)
    notify = on_listen or (lambda port: None)
    serve = partial(SERVERS[adapter], router, host, ssl=ssl, reuse_port=workers > 1)
    if workers == 1:
        serve(port, on_listen=notify)
        return
    warning = _shared_state_warning(router)
    if warning is not None:
        logger.warning(warning)

    def one_worker(port: int, on_listen: OnListen) -> None:
        serve(port, on_listen=on_listen)

    status = _run_workers(one_worker, workers, host, port, notify)
    if status:
        raise SystemExit(status)


# -- the command -----------------------------------------------------------------------


def load_router(target: str) -> Router:
    """The :class:`Router` named by ``"package.module:attribute"``: the attribute is a
    Router, or a function taking no arguments that returns one (a factory). Every
    mistake raises :class:`~spoc_sockets.UsageError` with one line saying which."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(f"expected package.module:router, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and f"{module_name}.".startswith(f"{exc.name}."):
            raise UsageError(
                f"cannot import {module_name!r}: no module named {exc.name!r}"
            ) from None
        raise
    found: object = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(found, Router) and inspect.isfunction(found):
        if any(
            p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            for p in inspect.signature(found).parameters.values()
        ):
            raise UsageError(f"{target} takes arguments: not a Router factory")
        found = found()
        if not isinstance(found, Router):
            raise UsageError(f"{target}() returned {type(found).__name__}, not a Router")
    if not isinstance(found, Router):
        raise UsageError(f"{target} is {type(found).__name__}, not a spoc_sockets.Router")
    return found


def _version() -> str:
    from . import __version__

    return f"spoc-sockets {__version__}"


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spoc-sockets serve",
        description="Serve a spoc_sockets Router until SIGTERM or SIGINT (then close every "
        "client with 1001 and drain).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "app", metavar="MODULE:ROUTER", help="where the Router is (or a function returning one)"
    )
    parser.add_argument("--adapter", choices=ADAPTERS, default="asyncio", help="which adapter")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port, 0 for any free port")
    parser.add_argument(
        "--certfile", help="PEM certificate chain to serve TLS, wss:// (None: plain TCP)"
    )
    parser.add_argument("--keyfile", help="PEM private key (None: it is in the certfile)")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO...)")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes serving the port (SO_REUSEPORT)"
    )
    parser.add_argument("--version", action="version", version=_version())
    return parser


def _tls(certfile: str | None, keyfile: str | None) -> _ssl.SSLContext | None:
    if certfile is None:
        if keyfile is not None:
            raise UsageError("--keyfile needs --certfile")
        return None
    context = _ssl.SSLContext(_ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, _ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate {certfile!r}: {exc}") from None
    return context


def serve_command(argv: Sequence[str]) -> None:
    """``spoc-sockets serve``: exits 2 with one line for every usage mistake."""
    args = _serve_parser().parse_args(argv)
    try:
        log_level_number(args.log_level)
        sys.path.insert(0, os.getcwd())  # as ``python -m`` would: the user's modules
        router = load_router(args.app)
        tls = _tls(args.certfile, args.keyfile)
        scheme = "https" if tls else "http"
        shown = f"[{args.host}]" if ":" in args.host else args.host
        workers = f", {args.workers} workers" if args.workers > 1 else ""

        def announce(port: int) -> None:
            print(
                f"spoc_sockets serving {args.app} ({args.adapter}{workers}) "
                f"on {scheme}://{shown}:{port}/",
                flush=True,
            )

        run(
            router,
            adapter=args.adapter,
            host=args.host,
            port=args.port,
            ssl=tls,
            workers=args.workers,
            log_level=args.log_level,
            on_listen=announce,
        )
    except UsageError as exc:
        _fail(str(exc), 2)
    except OSError as exc:  # the address is taken, not ours...
        _fail(f"cannot listen on {args.host}:{args.port}: {exc}", 1)


def _fail(message: str, status: int) -> None:
    print(f"spoc-sockets: error: {message}", file=sys.stderr)
    sys.exit(status)


USAGE = """usage: spoc-sockets serve MODULE:ROUTER [options]   serve your router
       spoc-sockets [demo] [options]                 serve the demo (chat and stream)
       spoc-sockets --version

Run `spoc-sockets serve --help` or `spoc-sockets demo --help` for the options."""


def main(argv: Sequence[str] | None = None) -> None:
    """The ``spoc-sockets`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    first = args[0] if args else None
    if first == "serve":
        serve_command(args[1:])
    elif first in ("-h", "--help"):
        print(USAGE)
    elif first == "--version":
        print(_version())
    else:
        from .demo import main as demo

        demo(args[1:] if first == "demo" else args)
