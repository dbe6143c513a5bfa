"""Servers under test as subprocesses: start, wait until ready, account CPU, stop.

Each server writes its stdout and stderr to a log file (never a pipe, which a busy server
could fill and block on); the driver polls that file for the server's listening line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerError(RuntimeError):
    """A server under test exited early or did not become ready in time."""


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a live process, all its threads, from /proc/<pid>/stat;
    of one of its threads with `thread` (its id; the main thread's is the pid)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    stat = Path(path).read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLOCK_TICKS


def connections_by_process(pids: Sequence[int], port: int) -> dict[int, int]:
    """How many established TCP connections to local `port` each of `pids` holds (from
    /proc/net/tcp{,6} and each process's descriptors); a process that has gone counts 0."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:  # ESTABLISHED
                    inodes.add(f"socket:[{inode}]")
    counts = {}
    for pid in pids:
        held = 0
        with contextlib.suppress(OSError):  # gone, or a descriptor closed while listed
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    held += os.readlink(fd.path) in inodes
        counts[pid] = held
    return counts


def rss_bytes(pid: int) -> int:
    """Resident memory of a live process (VmRSS in /proc/<pid>/status); 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return 0


def open_fds(pid: int) -> int:
    """How many file descriptors a live process holds (sockets included); 0 once it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class PeakWatch:
    """Polls a live process's RSS and open fds from the running event loop every `interval`
    seconds until stopped; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.rss = rss_bytes(pid)
        self.fds = open_fds(pid)
        self._interval = interval
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            self.rss = max(self.rss, rss_bytes(self.pid))
            self.fds = max(self.fds, open_fds(self.pid))
            await asyncio.sleep(self._interval)

    async def stop(self) -> tuple[int, int]:
        """Stop polling; the peak RSS (bytes) and the peak count of open fds."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.rss, self.fds


def clean_environment() -> dict[str, str]:
    """This process's environment without MODELGATE_* overrides, so servers run on defaults
    plus exactly the flags the benchmark passes."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}


class ServerProcess:
    """One server subprocess with its log file."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env`: variables added to the clean environment (e.g. a secret)."""
        self.argv = list(argv)
        self.log_path = log_path
        with log_path.open("wb") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**clean_environment(), **(env or {})},
                cwd=cwd,
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the server has exited, else None."""
        return self._popen.poll()

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far."""
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's log, for error messages."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """Poll the log until a line matches `pattern`; fail if the server exits first."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = compiled.search(self.log_path.read_text(errors="replace"))
            if found is not None:
                return found
            self._check_alive()
            time.sleep(0.05)
        raise ServerError(
            f"no line matching {pattern!r} within {timeout:.0f} s:\n{self.log_tail()}"
        )

    def wait_http_ok(self, url: str, timeout: float) -> None:
        """Poll `url` until it answers 200 (e.g. a V2 model-ready endpoint)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2.0) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise ServerError(f"{url} not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if the server has not exited after `timeout` seconds."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                return self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
        return self._popen.wait()

    def kill(self) -> int:
        """SIGKILL: no drain, no clean-up, as a crash or an OOM kill would end it."""
        if self._popen.poll() is None:
            self._popen.kill()
        return self._popen.wait()

    def _check_alive(self) -> None:
        code = self._popen.poll()
        if code is not None:
            raise ServerError(f"server exited with status {code}:\n{self.log_tail()}")


@contextlib.contextmanager
def running(
    argv: Sequence[str], log_path: Path, cwd: Path | None = None
) -> Iterator[ServerProcess]:
    """Start a server for the duration of a `with` block; it is always stopped after."""
    server = ServerProcess(argv, log_path, cwd)
    try:
        yield server
    finally:
        server.stop()
