"""Lambda SnapStart: keep what must not be cloned out of the snapshot.

With SnapStart, Lambda runs the init phase once, snapshots the whole environment (memory and
disk) and resumes many execution environments from that one snapshot. Three things of a client
would be cloned into each of them:

- events tracked during init, outside any handler (the client's own buffer): every restored
  environment would send them again. Before the snapshot they are flushed, or overflowed when
  that fails, and the report is logged, so the buffer is empty in the snapshot.
- kept-alive connections: every restored environment would write to the same TCP connection.
  They are closed before the snapshot (`Amplitude.close()`); a new pool opens on demand.
- the retry jitter's generator state: every restored environment would back off in lockstep.
  `_retry.JITTER_RNG` is reseeded from `os.urandom` after the restore. insert_ids need nothing:
  each is drawn from `os.urandom` when the event is tracked (`_encoder.new_insert_id`).

awslambdaric (4.2.2) runs the hooks registered with AWS's `snapshot_restore_py` when
`AWS_LAMBDA_INITIALIZATION_TYPE` is `snap-start`: once the handler module is imported, the
before-snapshot hooks (last registered first), then `GET /runtime/restore/next` (the process is
snapshotted there and resumes from it), then the after-restore hooks. A hook that raises fails
the init (exit 64) or the restore (exit 65), so these hooks never raise.

`snapshot_restore_py` is looked up only when that variable says SnapStart (invariant I6), and
the hooks are registered once per process; each client is kept in a weak set at construction.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from . import _retry
from ._config import ENV_INITIALIZATION_TYPE, SNAP_START
from ._deadline import Deadline

if TYPE_CHECKING:
    from ._client import Amplitude

logger = logging.getLogger("amp_lite")

HOOKS_MODULE = "snapshot_restore_py"  # AWS's, in the Lambda Python runtime (awslambdaric needs it)
SEED_BYTES = 32


class Registrar(Protocol):
    """What registers the hooks: `snapshot_restore_py`, or a test's stand-in."""

    def register_before_snapshot(self, func: Callable[..., Any], *args: Any,
                                 **kwargs: Any) -> Any: ...

    def register_after_restore(self, func: Callable[..., Any], *args: Any,
                               **kwargs: Any) -> Any: ...


class _Enrolled:
    """The live clients (weakly: a client the user drops is not kept alive by us) and whether
    the hooks are registered. A lock, never a thread (invariant I1)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: weakref.WeakSet[Amplitude] = weakref.WeakSet()
        self.registered = False


_enrolled = _Enrolled()


def enroll(client: Amplitude, *, environ: Mapping[str, str] = os.environ,
           registrar: Registrar | None = None) -> None:
    """Called by `Amplitude.__init__`: under SnapStart, keep `client` for the before-snapshot
    hook, registering the hooks on first use. Elsewhere it does nothing. Never raises: a client
    must not fail to build because of this."""
    if environ.get(ENV_INITIALIZATION_TYPE) != SNAP_START:
        return
    try:
        with _enrolled.lock:
            _enrolled.clients.add(client)
            if _enrolled.registered:
                return
            hooks = registrar if registrar is not None else _runtime_registrar()
            if hooks is None:
                logger.warning("amp_lite: %s=%s but %s is not installed: events tracked during "
                               "init are not flushed before the snapshot", ENV_INITIALIZATION_TYPE,
                               SNAP_START, HOOKS_MODULE)
                return
            hooks.register_before_snapshot(before_snapshot)
            hooks.register_after_restore(after_restore)
            _enrolled.registered = True
    except Exception:
        logger.exception("amp_lite: could not register the SnapStart hooks")


def _runtime_registrar() -> Registrar | None:
    if importlib.util.find_spec(HOOKS_MODULE) is None:
        return None
    module: Registrar = importlib.import_module(HOOKS_MODULE)  # a module: no stubs needed
    return module


def before_snapshot() -> None:
    """Flush (or overflow) each live client's own buffer, log where every event went, and close
    its pooled connections. Never raises into the runtime."""
    with _enrolled.lock:
        clients = list(_enrolled.clients)  # a client collected meanwhile is simply absent
    for client in clients:
        try:
            _flush_and_close(client)
        except Exception:
            logger.exception("amp_lite: before the SnapStart snapshot, a client could not be "
                             "flushed or closed")


def _flush_and_close(client: Amplitude) -> None:
    buffer = client._scopes.outside  # init code tracks outside any handler's scope
    try:
        deadline = Deadline.after(client.config.flush_timeout_s)
        report = client.flush_scope(buffer, deadline)  # never raises; no key: counted dropped
        if report.tracked or report.recovered:
            logger.info("amp_lite snapstart: before snapshot %s",
                        json.dumps(report.summary(), sort_keys=True))
    finally:
        client.close()


def after_restore() -> None:
    """Give this restored environment its own jitter sequence (the user's global `random` is
    left alone). Never raises into the runtime."""
    try:
        _retry.JITTER_RNG.seed(os.urandom(SEED_BYTES))
    except Exception:
        logger.exception("amp_lite: could not reseed the retry jitter after the SnapStart restore")
