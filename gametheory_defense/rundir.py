"""A pipeline run directory (``--out``): one writer, writes that never leave it, a config history.

:class:`RunDirectory` is what :func:`gametheory_defense.pipeline.run_pipeline` writes
through. It guarantees (see ``docs/reliability.md``):

- **One writer.** :meth:`RunDirectory.lock` takes an exclusive ``fcntl.flock`` on
  ``OUT/.lock`` for the whole run; a second process gets :class:`RunLockedError` (one line
  naming the holder's pid, host, command and start time; the CLI exits 2). The kernel
  drops the lock when its process dies, so a lock file left by a killed run is stale and
  simply taken over.
- **No writes outside.** Every file is written to a fresh temporary file in its
  directory (``mkstemp``: never an existing path) and renamed over the final name;
  ``rename`` replaces a symbolic link itself, never its target. Sub-directories of the
  run that are symbolic links are refused.
- **A config history.** ``config.json`` keeps the current configuration and every earlier
  one with the time, the command, the torch thread count and what changed
  (:func:`config_changes`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from gametheory_defense.errors import ConfigError, GTDError

__all__ = ["RunDirectory", "RunLockedError", "config_changes", "LOCK_NAME", "CONFIG_NAME", "CONFIG_FORMAT"]

log = logging.getLogger(__name__)

#: The lock file inside a run directory.
LOCK_NAME = ".lock"
#: The configuration (and its history) inside a run directory.
CONFIG_NAME = "config.json"
#: ``format`` of ``config.json``.
CONFIG_FORMAT = "gametheory-defense/run-config"


class RunLockedError(GTDError):
    """Another process holds the run directory's lock (the message names it)."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirectory:
    """The ``--out`` directory of a pipeline run.

    Parameters
    ----------
    root : str or pathlib.Path
        The directory (created by :meth:`lock` if missing). ``root`` itself may be a
        symbolic link (the user chose it); what is inside it may not.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.root)!r})"

    # ------------------------------------------------------------------ lock
    @contextlib.contextmanager
    def lock(self, *, command: str | None = None) -> Iterator[None]:
        """Hold the directory's exclusive lock for the block.

        Raises
        ------
        RunLockedError
            Another live process holds it.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_NAME
        if path.is_symlink():
            raise ConfigError(f"{path}: is a symbolic link; remove it (a run directory's files must be its own)")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            self._acquire(fd, path)
        except BaseException:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "command": command}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
        os.fsync(fd)
        self._lock_fd = fd
        try:
            yield
        finally:
            self._lock_fd = None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # releases the flock

    def _acquire(self, fd: int, path: Path) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: fall back to the recorded pid
            holder = self._holder(path)
            pid = holder.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
                raise RunLockedError(self._locked_message(holder)) from None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunLockedError(self._locked_message(self._holder(path))) from None

    @staticmethod
    def _holder(path: Path) -> dict[str, Any]:
        try:
            holder = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _locked_message(self, holder: Mapping[str, Any]) -> str:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        if holder.get("command"):
            who += f" ({holder['command']})"
        if holder.get("since"):
            who += f" since {holder['since']}"
        return f"{self.root}: run directory is in use by {who}; wait for it to finish or choose another --out"

    # ----------------------------------------------------------------- paths
    def path(self, rel: str | os.PathLike[str]) -> Path:
        """``root / rel`` after checking that no directory on the way is a symbolic link.

        Raises
        ------
        ConfigError
            A directory between ``root`` and the file is a symbolic link, or ``rel``
            leaves the run directory.
        """
        rel = Path(rel)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{rel}: not a path inside the run directory")
        cur = self.root
        for part in rel.parts[:-1]:
            cur = cur / part
            if cur.is_symlink():
                raise ConfigError(
                    f"{cur}: is a symbolic link; a run directory's sub-directories must be its own "
                    "(remove the link, or copy what it points to into place)"
                )
        return self.root / rel

    def directory(self, rel: str | os.PathLike[str]) -> Path:
        """``root / rel`` as a real directory (created if missing; a symbolic link is refused)."""
        path = self.path(Path(rel) / "_")
        path = path.parent
        if path.is_symlink():
            raise ConfigError(
                f"{path}: is a symbolic link; a run directory's sub-directories must be its own "
                "(remove the link, or copy what it points to into place)"
            )
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ---------------------------------------------------------------- writes
    def write_with(self, rel: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
        """Call ``writer(tmp)`` on a fresh temporary file, then rename it onto ``rel``.

        The temporary file keeps ``rel``'s suffix (writers that infer the format from it,
        e.g. ``savefig``, work). A symbolic link at ``rel`` is replaced, not followed.
        """
        final = self.path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            writer(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return final

    def write_text(self, rel: str | os.PathLike[str], text: str) -> Path:
        """Write ``text`` (UTF-8) to ``rel`` atomically, never through a symbolic link."""
        return self.write_with(rel, lambda p: p.write_text(text, encoding="utf-8"))

    def write_json(self, rel: str | os.PathLike[str], obj: Any) -> Path:
        """Write ``obj`` as indented JSON to ``rel`` atomically, never through a symbolic link."""
        return self.write_text(rel, json.dumps(obj, indent=2, allow_nan=False) + "\n")

    # ---------------------------------------------------------------- config
    def previous_config(self) -> dict[str, Any] | None:
        """The configuration the directory was last run with (``None`` if there is none)."""
        body = self._config_body()
        return None if body is None else body.get("config")

    def _config_body(self) -> dict[str, Any] | None:
        path = self.root / CONFIG_NAME
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); its history starts again", path, exc)
            return None
        if not isinstance(body, dict):
            return None
        if body.get("format") != CONFIG_FORMAT:  # written before the history existed: the bare config
            return {"format": CONFIG_FORMAT, "config": body, "history": []}
        return body

    def record_config(self, config: Mapping[str, Any], *, command: str | None, environment: Mapping[str, str]) -> list[str]:
        """Write ``config.json``: this configuration, plus the earlier ones in ``history``.

        Returns
        -------
        list of str
            What changed since the previous run of this directory (empty for a first run).
        """
        body = self._config_body()
        previous = None if body is None else body.get("config")
        changes = [] if previous is None else config_changes(previous, config)
        history = [] if body is None else list(body.get("history") or [])
        entry = {
            "time": _now(),
            "command": command,
            "torch_threads": environment.get("torch_threads"),
            "torch_cpu_capability": environment.get("torch_cpu_capability"),
            "changes": changes,
            "config": dict(config),
        }
        history.append(entry)
        self.write_json(CONFIG_NAME, {"format": CONFIG_FORMAT, "config": dict(config), "history": history})
        return changes

    def previous_environment(self) -> dict[str, Any] | None:
        """The thread count and CPU capability recorded by the last run (``None`` if none)."""
        body = self._config_body()
        if not body or not body.get("history"):
            return None
        last = body["history"][-1]
        return {k: last.get(k) for k in ("torch_threads", "torch_cpu_capability")}


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Differences between two JSON-able configurations, one ``"key: old -> new"`` line each.

    Examples
    --------
    >>> config_changes({"data": {"eval_offset": 0}}, {"data": {"eval_offset": 50}})
    ['data.eval_offset: 0 -> 50']
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in new:
                out.append(f"{where}: removed (was {json.dumps(old[key])})")
            elif key not in old:
                out.append(f"{where}: added ({json.dumps(new[key])})")
            else:
                out += config_changes(old[key], new[key], where)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += config_changes(a, b, f"{prefix}[{i}]")
        return out
    if old != new:
        return [f"{prefix}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []
