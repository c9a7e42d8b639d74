"""livemig for Python control planes: live, crash-safe migration of Ceph RBD
volumes, driven from your own database and compute agent.

A control plane supplies two objects:

* a :class:`Catalog` (its volume and attachment tables). livemig reads
  through it and changes it only with :meth:`Catalog.compare_and_swap`, one
  atomic :class:`Change` at a time. Raise :class:`Conflict` to refuse a
  change; refusing the one with ``purpose == ChangePurpose.SWITCH`` (the
  commit point) rolls the migration back.
* optionally a :class:`Hypervisor` (hold / resume / re-point an instance)
  for live migrations of attached volumes that are not reached over QMP.

Then::

    with livemig.Migrator(conf_path="/etc/ceph/ceph.conf", jobs_pool="livemig",
                          catalog=my_catalog, hypervisor=my_agent) as m:
        m.precheck("vol-1", "fast-pool")        # raises if it cannot move
        job = m.start("vol-1", "fast-pool")     # returns at once
        for p in job.watch():                   # progress until it ends
            print(p.phase, p.bytes_done, p.bytes_total)
        job.wait()                              # raises if it did not finish

Every failure is a :class:`LivemigError` subclass named after its code
(``PoolNotFound``, ``Conflict``, ``RolledBack``...), whose message says what
is wrong and what to do. Callbacks run on livemig's threads, one at a time
per migrator; an exception they raise becomes the error livemig reports
(``LivemigError`` subclasses keep their code, anything else is an I/O error).
"""

from __future__ import annotations

import ctypes
import enum
import json
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import _native as _n

__all__ = [
    "Access",
    "AccessKind",
    "Attachment",
    "Backing",
    "Catalog",
    "Change",
    "ChangePurpose",
    "Hypervisor",
    "Instance",
    "Job",
    "LivemigError",
    "Migrator",
    "Progress",
    "RunOptions",
    "Volume",
    "VolumeStatus",
    "version",
]


def version() -> str:
    """The version of the loaded livemig library."""
    return _n.lib.livemig_version().decode()


# ---------------------------------------------------------------- errors


class LivemigError(Exception):
    """A failed livemig call: ``code`` (the C ABI's), ``name`` and ``message``."""

    code: int = 0

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    @property
    def name(self) -> str:
        return _n.lib.livemig_code_name(self.code).decode()

    def __str__(self) -> str:
        return f"[{self.name}] {self.message}"


_BY_CODE: Dict[int, type] = {}


def _error_class(name: str, code: int, doc: str) -> type:
    cls = type(name, (LivemigError,), {"code": code, "__doc__": doc})
    _BY_CODE[code] = cls
    return cls


ClusterUnreachable = _error_class("ClusterUnreachable", 1, "The monitors could not be reached.")
ConfigError = _error_class("ConfigError", 2, "The ceph.conf or keyring could not be read.")
PoolNotFound = _error_class("PoolNotFound", 3, "The named pool does not exist.")
NamespaceNotFound = _error_class("NamespaceNotFound", 4, "The namespace does not exist.")
ImageNotFound = _error_class("ImageNotFound", 5, "The image does not exist.")
SameImage = _error_class("SameImage", 6, "Source and destination are the same image.")
DestinationExists = _error_class("DestinationExists", 7, "The destination image exists.")
DestinationInUse = _error_class("DestinationInUse", 8, "The destination is in use.")
DestinationTooSmall = _error_class("DestinationTooSmall", 9, "The destination is too small.")
InvalidInput = _error_class("InvalidInput", 10, "An argument or record is malformed.")
NoSpace = _error_class("NoSpace", 11, "Out of space, or a quota was hit.")
PermissionDenied = _error_class("PermissionDenied", 12, "The client lacks capabilities.")
Busy = _error_class("Busy", 13, "The object is busy.")
Fenced = _error_class("Fenced", 14, "Another client holds the lock, or this one was fenced.")
Cancelled = _error_class("Cancelled", 15, "Cancelled (a paused job can be resumed).")
Mismatch = _error_class("Mismatch", 16, "A copy differs from its source.")
AttachedTwice = _error_class("AttachedTwice", 17, "The volume is attached to more than one instance.")
AlreadyMigrating = _error_class("AlreadyMigrating", 18, "Another migration holds the volume.")
RecordTooNew = _error_class("RecordTooNew", 19, "A job record was written by a newer livemig.")
CorruptRecord = _error_class("CorruptRecord", 20, "A job record cannot be decoded.")
JobFinished = _error_class("JobFinished", 21, "The job is past the point where this applies.")
Conflict = _error_class(
    "Conflict", 22, "A record changed meanwhile; raised by a catalog: the change is refused."
)
NotInCatalog = _error_class("NotInCatalog", 23, "A catalog entry does not exist.")
InvalidState = _error_class("InvalidState", 24, "The catalog's state does not allow this.")
NotConverging = _error_class("NotConverging", 25, "The writer outpaces the copy.")
HypervisorError = _error_class("HypervisorError", 26, "The hypervisor hook failed.")
IoError = _error_class("IoError", 27, "An I/O or librados/librbd failure.")
JobNotFound = _error_class("JobNotFound", 28, "No job has this id.")
ServerCopyUnavailable = _error_class(
    "ServerCopyUnavailable", 29, "The OSDs cannot copy this data (server-side copy was asked for)."
)
NotSynced = _error_class("NotSynced", 30, "A sync's replica holds no whole point in time yet.")
NullArgument = _error_class("NullArgument", 100, "A required argument is missing.")
BadHandle = _error_class("BadHandle", 101, "The handle is closed, freed or not livemig's.")
InvalidString = _error_class("InvalidString", 102, "A string is not UTF-8.")
Panic = _error_class("Panic", 103, "A bug in livemig; close the migrator.")
CallbackError = _error_class("CallbackError", 104, "A callback returned an unknown code.")
Running = _error_class("Running", 105, "The job is already running here (or still runs).")
RolledBack = _error_class("RolledBack", 106, "The job rolled itself back; the message says why.")
NotRunning = _error_class("NotRunning", 107, "The job is unfinished and not running here.")
InCallback = _error_class("InCallback", 108, "A blocking call was made from inside a callback.")


def _error(code: int) -> LivemigError:
    message = _n.lib.livemig_last_error_message().decode(errors="replace")
    cls = _BY_CODE.get(code, LivemigError)
    return cls(message, code)


def _check(code: int) -> None:
    if code != _n.OK:
        raise _error(code)


def _b(s: Optional[str]) -> Optional[bytes]:
    return None if s is None else s.encode()


def _s(b: Optional[bytes]) -> str:
    return "" if b is None else b.decode()


# ---------------------------------------------------------------- records


class VolumeStatus(enum.IntEnum):
    """A volume's status, in Cinder's vocabulary."""

    AVAILABLE = 0
    IN_USE = 1
    DETACHING = 2
    ATTACHING = 3
    MAINTENANCE = 4
    ERROR = 5


class AccessKind(enum.IntEnum):
    """How the instance behind an attachment is reached."""

    NONE = 0
    QMP = 1
    TEST_INSTANCE = 2


class ChangePurpose(enum.IntEnum):
    """Why livemig changes the catalog."""

    OTHER = 0
    MARK = 1
    SWITCH = 2
    CONNECT = 3
    RELEASE = 4
    RESTORE = 5


@dataclass(frozen=True)
class Backing:
    """Where data lives: an image (``pool[/namespace]/image``) in a cluster."""

    pool: str
    image: str
    namespace: str = ""
    cluster: str = "local"

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.pool}/{ns}{self.image}"

    def _c(self) -> _n.Backing:
        return _n.Backing(_b(self.cluster), _b(self.pool), _b(self.namespace), _b(self.image))

    @staticmethod
    def _from_c(c: _n.Backing) -> "Backing":
        return Backing(_s(c.pool), _s(c.image), _s(c.pool_namespace), _s(c.cluster) or "local")


@dataclass(frozen=True)
class Volume:
    """A volume record; ``migration`` is the id of the job holding it, if any."""

    id: str
    size: int
    status: VolumeStatus
    backing: Backing
    migration: Optional[str] = None
    location: str = ""

    def _c(self) -> _n.Volume:
        return _n.Volume(
            _b(self.id), self.size, int(self.status), _b(self.migration), self.backing._c(), _b(self.location)
        )

    @staticmethod
    def _from_c(c: _n.Volume) -> "Volume":
        return Volume(
            id=_s(c.id),
            size=c.size,
            status=VolumeStatus(c.status),
            backing=Backing._from_c(c.backing),
            migration=None if c.migration is None else _s(c.migration),
            location=_s(c.location),
        )


@dataclass(frozen=True)
class Access:
    """The channel to an instance: ``kind`` and, for QMP/test instances, a socket path."""

    kind: AccessKind = AccessKind.NONE
    socket: Optional[str] = None


@dataclass(frozen=True)
class Attachment:
    """An instance's use of a volume; ``connection`` is the image it has open."""

    volume_id: str
    instance_id: str
    device: str
    access: Access
    connection: Backing

    def _c(self) -> _n.Attachment:
        return _n.Attachment(
            _b(self.volume_id),
            _b(self.instance_id),
            _b(self.device),
            int(self.access.kind),
            _b(self.access.socket),
            self.connection._c(),
        )

    @staticmethod
    def _from_c(c: _n.Attachment) -> "Attachment":
        return Attachment(
            volume_id=_s(c.volume_id),
            instance_id=_s(c.instance_id),
            device=_s(c.device),
            access=Access(AccessKind(c.access_kind), None if c.access_socket is None else _s(c.access_socket)),
            connection=Backing._from_c(c.connection),
        )


@dataclass(frozen=True)
class Instance:
    """An instance record."""

    id: str
    name: str = ""


@dataclass
class Change:
    """One atomic change (compare-and-swap) of the catalog.

    Apply it only if every ``expect_*`` holds (volumes equal field by field,
    the listed volumes' attachments exactly these, in any order); then apply
    every put and remove, all in one transaction. Otherwise raise
    :class:`Conflict` and change nothing.
    """

    purpose: ChangePurpose
    expect_volumes: List[Volume] = field(default_factory=list)
    expect_no_volumes: List[str] = field(default_factory=list)
    expect_attachments: Dict[str, List[Attachment]] = field(default_factory=dict)
    put_volumes: List[Volume] = field(default_factory=list)
    remove_volumes: List[str] = field(default_factory=list)
    put_attachments: List[Attachment] = field(default_factory=list)
    remove_attachments: List[Tuple[str, str]] = field(default_factory=list)
    put_instances: List[Instance] = field(default_factory=list)

    @staticmethod
    def _from_c(c: _n.Change) -> "Change":
        def items(ptr: Any, count: int) -> list:
            return [ptr[i] for i in range(count)]

        return Change(
            purpose=ChangePurpose(c.purpose),
            expect_volumes=[Volume._from_c(v) for v in items(c.expect_volumes, c.expect_volumes_count)],
            expect_no_volumes=[_s(s) for s in items(c.expect_no_volumes, c.expect_no_volumes_count)],
            expect_attachments={
                _s(lst.volume_id): [Attachment._from_c(a) for a in items(lst.attachments, lst.count)]
                for lst in items(c.expect_attachments, c.expect_attachments_count)
            },
            put_volumes=[Volume._from_c(v) for v in items(c.put_volumes, c.put_volumes_count)],
            remove_volumes=[_s(s) for s in items(c.remove_volumes, c.remove_volumes_count)],
            put_attachments=[Attachment._from_c(a) for a in items(c.put_attachments, c.put_attachments_count)],
            remove_attachments=[
                (_s(k.volume_id), _s(k.instance_id)) for k in items(c.remove_attachments, c.remove_attachments_count)
            ],
            put_instances=[Instance(_s(i.id), _s(i.name)) for i in items(c.put_instances, c.put_instances_count)],
        )


# ---------------------------------------------------------------- what the control plane implements


class Catalog(ABC):
    """The control plane's database, as livemig sees it."""

    @abstractmethod
    def get_volume(self, volume_id: str) -> Volume:
        """The volume; raise :class:`NotInCatalog` if there is none."""

    @abstractmethod
    def list_volumes(self) -> Sequence[Volume]:
        """Every volume."""

    @abstractmethod
    def list_attachments(self, volume_id: str) -> Sequence[Attachment]:
        """The volume's attachments (normally none or one)."""

    @abstractmethod
    def compare_and_swap(self, change: Change) -> None:
        """Apply ``change`` atomically or raise :class:`Conflict` (see :class:`Change`)."""


class Hypervisor(ABC):
    """The control plane's compute agent. Every call must be idempotent."""

    @abstractmethod
    def hold(self, attachment: Attachment) -> None:
        """Stop the instance's writes; return once every acknowledged write is on the image."""

    @abstractmethod
    def resume(self, attachment: Attachment) -> None:
        """Let the instance write again."""

    @abstractmethod
    def repoint(self, attachment: Attachment, to: Backing) -> None:
        """Make the held instance use ``to`` instead of its current image."""


def _guarded(fn):
    """Runs a callback body; an exception becomes an error code and message."""

    def call(*args):
        try:
            fn(*args)
            return _n.OK
        except LivemigError as e:
            _n.lib.livemig_callback_error(e.message.encode())
            return e.code
        except BaseException as e:  # a callback must never unwind into C
            where = traceback.extract_tb(e.__traceback__)[-1]
            text = f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})"
            _n.lib.livemig_callback_error(text.encode())
            return _n.ERR_IO

    return call


class _Trampolines:
    """The C callbacks for one migrator; kept alive as long as it is."""

    def __init__(self, catalog: Optional[Catalog], hypervisor: Optional[Hypervisor]):
        self.catalog_struct = None
        self.hypervisor_struct = None
        if catalog is not None:

            def get_volume(_ud, volume_id, records):
                v = catalog.get_volume(volume_id.decode())
                _check(_n.lib.livemig_records_add_volume(records, ctypes.byref(v._c())))

            def list_volumes(_ud, records):
                for v in catalog.list_volumes():
                    _check(_n.lib.livemig_records_add_volume(records, ctypes.byref(v._c())))

            def list_attachments(_ud, volume_id, records):
                for a in catalog.list_attachments(volume_id.decode()):
                    _check(_n.lib.livemig_records_add_attachment(records, ctypes.byref(a._c())))

            def compare_and_swap(_ud, change):
                catalog.compare_and_swap(Change._from_c(change.contents))

            self.catalog_struct = _n.CatalogCallbacks(
                None,
                _n.GET_VOLUME(_guarded(get_volume)),
                _n.LIST_VOLUMES(_guarded(list_volumes)),
                _n.LIST_ATTACHMENTS(_guarded(list_attachments)),
                _n.COMPARE_AND_SWAP(_guarded(compare_and_swap)),
            )
        if hypervisor is not None:

            def hold(_ud, attachment):
                hypervisor.hold(Attachment._from_c(attachment.contents))

            def resume(_ud, attachment):
                hypervisor.resume(Attachment._from_c(attachment.contents))

            def repoint(_ud, attachment, to):
                hypervisor.repoint(Attachment._from_c(attachment.contents), Backing._from_c(to.contents))

            self.hypervisor_struct = _n.HypervisorCallbacks(
                None,
                _n.ATTACHMENT_CALL(_guarded(hold)),
                _n.ATTACHMENT_CALL(_guarded(resume)),
                _n.REPOINT(_guarded(repoint)),
            )


# ---------------------------------------------------------------- migrations


@dataclass
class RunOptions:
    """How a job runs; ``None`` means the default (or what a resumed job recorded)."""

    bwlimit_bytes_per_sec: Optional[int] = None
    in_flight_bytes: Optional[int] = None
    cutover_bytes: Optional[int] = None
    stall_rounds: Optional[int] = None
    max_rounds: Optional[int] = None
    on_stall: Optional[str] = None  # "cutover" or "pause"
    fence_timeout_ms: Optional[int] = None
    keep_source: bool = False
    trash_delay_secs: Optional[int] = None
    mirror_stall_ms: Optional[int] = None
    engine: Optional[str] = None  # "native" or "qemu"; None: chosen by the instance
    # Live: OSD priority of the deltas' I/O, 1..255 (from 196 ahead of the
    # instance's); 0: Ceph's client default (63), not raised; None: 200.
    delta_op_priority: Optional[int] = None
    # Who copies the data: "server" (the OSDs, or fail), "client" (livemig
    # itself); None: the OSDs where they can, the client otherwise.
    copy_mode: Optional[str] = None
    # Live: a delta's changes covering at least this fraction of an object
    # are applied by the OSDs copying it whole; above 1: never; None: 0.625.
    whole_object_from: Optional[float] = None
    # start(): the pool for the new image's data objects (replicated, or
    # erasure-coded with overwrites); None: the image's own pool.
    data_pool: Optional[str] = None
    # start(): the storage location the volume declares once moved (its
    # catalog record's location, rewritten in the switch); None keeps its own.
    location: Optional[str] = None

    def _c(self) -> _n.RunOptions:
        on_stall = {None: 0, "cutover": 1, "pause": 2}.get(self.on_stall)
        if on_stall is None:
            raise ValueError(f"on_stall must be 'cutover' or 'pause', not {self.on_stall!r}")
        engine = {None: 0, "native": 1, "qemu": 2}.get(self.engine)
        if engine is None:
            raise ValueError(f"engine must be 'native' or 'qemu', not {self.engine!r}")
        copy_mode = {None: 0, "server": 1, "client": 2}.get(self.copy_mode)
        if copy_mode is None:
            raise ValueError(f"copy_mode must be 'server' or 'client', not {self.copy_mode!r}")
        return _n.RunOptions(
            ctypes.sizeof(_n.RunOptions),
            engine,
            self.bwlimit_bytes_per_sec or 0,
            self.in_flight_bytes or 0,
            self.cutover_bytes or 0,
            self.stall_rounds or 0,
            self.max_rounds or 0,
            on_stall,
            self.fence_timeout_ms or 0,
            1 if self.keep_source else 0,
            self.trash_delay_secs or 0,
            self.mirror_stall_ms or 0,
            {None: 0, 0: _n.DELTA_PRIORITY_CEPH_DEFAULT}.get(self.delta_op_priority, self.delta_op_priority),
            copy_mode,
            0 if self.whole_object_from is None else max(1, min(1001, round(self.whole_object_from * 1000))),
            self.data_pool.encode() if self.data_pool else None,
            self.location.encode() if self.location else None,
        )


@dataclass(frozen=True)
class Progress:
    """Where a job stands. ``result`` is the error a stopped run ended with
    (``None`` while running or once done)."""

    phase: str
    running: bool
    round: int
    bytes_total: int
    bytes_done: int
    bytes_per_sec: int
    result: Optional[LivemigError]

    @property
    def finished(self) -> bool:
        return not self.running


class Job:
    """A migration job, by id. Ids are durable: any process can resume a job."""

    def __init__(self, migrator: "Migrator", job_id: str):
        self.migrator = migrator
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def progress(self) -> Progress:
        """Where the job stands now."""
        p = _n.Progress()
        _check(_n.lib.livemig_get_progress(self.migrator._handle, self.id.encode(), ctypes.byref(p)))
        result = None
        if not p.running and p.result != _n.OK:
            result = _BY_CODE.get(p.result, LivemigError)(
                f"the job's last run ended with {_n.lib.livemig_code_name(p.result).decode()}", p.result
            )
        return Progress(
            phase=p.phase.decode(),
            running=bool(p.running),
            round=p.round,
            bytes_total=p.bytes_total,
            bytes_done=p.bytes_done,
            bytes_per_sec=p.bytes_per_sec,
            result=result,
        )

    def watch(self, interval: float = 0.5) -> Iterator[Progress]:
        """Yields progress every ``interval`` seconds, and the final state last."""
        while True:
            p = self.progress()
            yield p
            if not p.running:
                return
            time.sleep(interval)

    def wait(self, timeout: Optional[float] = None) -> None:
        """Waits for the run to end; returns if the job is done, raises otherwise
        (:class:`RolledBack`, the run's error, or :class:`Running` on timeout)."""
        ms = -1 if timeout is None else int(timeout * 1000)
        _check(_n.lib.livemig_wait(self.migrator._handle, self.id.encode(), ms))

    def status(self) -> Dict[str, Any]:
        """The job record: ``phase_name``, ``phase`` (with its data), ``live``
        (rounds, ``cutover`` with hold/resume times), ``history``,
        ``last_error``, ``running`` (driven by this migrator now) and, while
        it copies, ``copy``: bytes, rate, and who moves them (``method``:
        ``server_side`` or ``client``; ``client_reason``)."""
        out = ctypes.c_void_p()
        _check(_n.lib.livemig_status(self.migrator._handle, self.id.encode(), ctypes.byref(out)))
        return json.loads(_n.take_string(out))

    def pause(self) -> None:
        """Stops the run at its next safe point; :meth:`resume` continues it."""
        _check(_n.lib.livemig_pause(self.migrator._handle, self.id.encode()))

    def resume(self, options: Optional[RunOptions] = None) -> None:
        """Drives the job again in the background (after a pause, an error or a crash)."""
        opts = None if options is None else ctypes.byref(options._c())
        _check(_n.lib.livemig_resume(self.migrator._handle, self.id.encode(), opts))

    def abort(self, reason: str = "aborted by the control plane") -> None:
        """Rolls the job back (before its switch only); blocks until done."""
        _check(_n.lib.livemig_abort(self.migrator._handle, self.id.encode(), reason.encode()))


class Migrator:
    """A connection to the cluster that runs migrations against a control plane.

    Use it as a context manager, or call :meth:`close`. Closing pauses the
    jobs it drives (they stay resumable). ``catalog=None`` uses livemig's
    built-in catalog in ``jobs_pool``; ``hypervisor=None`` the built-in hooks.
    """

    def __init__(
        self,
        conf_path: Optional[str] = None,
        *,
        jobs_pool: str = "livemig",
        client_id: Optional[str] = None,
        keyring: Optional[str] = None,
        catalog: Optional[Catalog] = None,
        hypervisor: Optional[Hypervisor] = None,
        connect_timeout: int = 10,
    ):
        self._callbacks = _Trampolines(catalog, hypervisor)
        config = _n.Config(_b(conf_path), _b(client_id), _b(keyring), _b(jobs_pool), connect_timeout)
        handle = ctypes.c_void_p()
        cat = self._callbacks.catalog_struct
        hyp = self._callbacks.hypervisor_struct
        _check(
            _n.lib.livemig_connect(
                ctypes.byref(config),
                None if cat is None else ctypes.byref(cat),
                None if hyp is None else ctypes.byref(hyp),
                ctypes.byref(handle),
            )
        )
        self._handle = handle.value
        self._closed = False

    def __enter__(self) -> "Migrator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Pauses the jobs this migrator drives and disconnects (idempotent)."""
        if self._closed:
            return
        self._closed = True
        _check(_n.lib.livemig_migrator_free(self._handle))

    def add_cluster(
        self, name: str, conf_path: str, client_id: Optional[str] = None, keyring: Optional[str] = None
    ) -> None:
        """Connects another cluster under ``name``: destinations can then name
        it (``NAME:POOL[/IMAGE]``), and jobs that moved volumes to or from it
        can be resumed. Raises ``ClusterUnreachable`` if it cannot be reached."""
        _check(
            _n.lib.livemig_add_cluster(
                self._handle,
                name.encode(),
                conf_path.encode(),
                client_id.encode() if client_id else None,
                keyring.encode() if keyring else None,
            )
        )

    def precheck(self, volume_id: str, destination: str) -> Dict[str, Any]:
        """The precheck report (rules and results) if the volume can move to
        ``destination`` (``POOL``, ``POOL/IMAGE`` or ``POOL/NS/IMAGE``; on a
        cluster added with :meth:`add_cluster`, ``NAME:POOL[/IMAGE]``);
        raises the first failed rule's error otherwise (with ``.report``)."""
        out = ctypes.c_void_p()
        code = _n.lib.livemig_precheck(self._handle, volume_id.encode(), destination.encode(), ctypes.byref(out))
        error = _error(code) if code != _n.OK else None
        report = json.loads(_n.take_string(out) or "null")
        if error is not None:
            error.report = report  # type: ignore[attr-defined]
            raise error
        return report

    def start(self, volume_id: str, destination: str, options: Optional[RunOptions] = None) -> Job:
        """Prechecks and records a new job, then runs it in the background."""
        out = ctypes.c_void_p()
        opts = None if options is None else ctypes.byref(options._c())
        _check(_n.lib.livemig_start(self._handle, volume_id.encode(), destination.encode(), opts, ctypes.byref(out)))
        return Job(self, _n.take_string(out))

    def sync_start(
        self, volume_id: str, destination: str, options: Optional[RunOptions] = None, interval_ms: int = 0
    ) -> Job:
        """Starts keeping a replica of an attached volume at ``destination``
        (as :meth:`start` takes it), a round every ``interval_ms`` (0: 2000),
        driven in the background until :meth:`sync_cutover` or :meth:`sync_stop`."""
        out = ctypes.c_void_p()
        opts = None if options is None else ctypes.byref(options._c())
        _check(
            _n.lib.livemig_sync_start(
                self._handle, volume_id.encode(), destination.encode(), opts, interval_ms, ctypes.byref(out)
            )
        )
        return Job(self, _n.take_string(out))

    def sync_status(self, volume_id: str) -> Dict[str, Any]:
        """How far behind the volume's replica is: ``rpo_ms`` (age of the newest
        point in time it holds whole; None before the first copy completes),
        ``behind_bytes``, ``rounds``, ``last_round``, ``phase``, ``job``.
        Raises ``JobNotFound`` if the volume is not being synced."""
        out = ctypes.c_void_p()
        _check(_n.lib.livemig_sync_status(self._handle, volume_id.encode(), ctypes.byref(out)))
        return json.loads(_n.take_string(out))

    def sync_cutover(self, volume_id: str, timeout: float = 600.0) -> None:
        """Moves the volume to its replica (one more round, then the fenced
        cutover) and blocks until done. Raises ``NotSynced`` while the
        replica holds no whole point in time."""
        _check(_n.lib.livemig_sync_cutover(self._handle, volume_id.encode(), int(timeout * 1000)))

    def sync_stop(self, volume_id: str, timeout: float = 600.0) -> None:
        """Stops syncing (replica and snapshots removed, the volume stays);
        blocks until done."""
        _check(_n.lib.livemig_sync_stop(self._handle, volume_id.encode(), int(timeout * 1000)))

    def sync_failover(self, volume_id: str, force: bool = False) -> Dict[str, Any]:
        """The volume's cluster is lost: makes the newest point in time its
        replica holds whole the volume (writes acknowledged after it are
        lost) and returns the failover's report (``point_ms``, ``at_ms``,
        ``forced``, ``rolled_back``, ``fenced``). Raises ``InvalidState``
        while the volume's cluster answers, unless ``force``; ``NotSynced``
        before the replica holds a point in time."""
        out = ctypes.c_void_p()
        _check(_n.lib.livemig_sync_failover(self._handle, volume_id.encode(), int(force), ctypes.byref(out)))
        return json.loads(_n.take_string(out))

    def sync_resync(self, volume_id: str, options: Optional[RunOptions] = None, interval_ms: int = 0) -> Job:
        """After a failover: syncs the volume back to the copy the failover
        replaced, from the point in time both hold (only what changed since
        is sent), driven in the background until :meth:`sync_cutover` (the
        failback) or :meth:`sync_stop`. Raises ``JobNotFound`` if the volume
        never failed over."""
        out = ctypes.c_void_p()
        opts = None if options is None else ctypes.byref(options._c())
        _check(_n.lib.livemig_sync_resync(self._handle, volume_id.encode(), opts, interval_ms, ctypes.byref(out)))
        return Job(self, _n.take_string(out))

    def job(self, job_id: str) -> Job:
        """A job by id (e.g. one a crashed process left, to resume or abort)."""
        return Job(self, job_id)
