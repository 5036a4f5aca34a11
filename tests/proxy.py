"""A TCP proxy in front of PostgreSQL that a test can cut, blackhole and restore, to simulate
outages, or slow down, to simulate a slow database (a synchronous replica, a network disk)."""

import socket
import threading
import time

from tests.harness import free_port


class TcpProxy:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432), delay: float = 0.0) -> None:
        self.target = target
        self.delay = delay  # seconds added before each chunk the server sends back
        self.port = free_port()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.flowing = threading.Event()
        self.restore()

    def restore(self) -> None:
        """Accept connections again after cut(); forward again after blackhole(), the held
        bytes first, as a network that heals delivers what it had retransmitted."""
        self.flowing.set()
        if self.listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and kill every open one, as a crashed database would."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets.clear()

    def blackhole(self) -> None:
        """Accept connections and never answer them, and forward nothing either way on the
        open ones, closing none: a database behind a network that drops its packets."""
        self.flowing.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self.flowing.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self.lock:
            self.sockets.append(upstream)
        for a, b, slow in ((client, upstream, False), (upstream, client, True)):
            threading.Thread(target=self._pump, args=(a, b, slow), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                if slow and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"
