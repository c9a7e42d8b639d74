"""ctypes declarations of livemig's C ABI (ffi/livemig-c/include/livemig.h).

Kept in step with the header by hand; the test suite exercises every
declaration here against the real library. Nothing in this module is
public: use the ``livemig`` package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_int32,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path


def _load() -> ctypes.CDLL:
    """The library: $LIVEMIG_LIBRARY, else next to this package, else the system's."""
    candidates = []
    env = os.environ.get("LIVEMIG_LIBRARY")
    if env:
        candidates.append(env)
    here = Path(__file__).resolve().parent
    candidates.append(str(here / "liblivemig_c.so"))
    found = ctypes.util.find_library("livemig_c")
    if found:
        candidates.append(found)
    errors = []
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise ImportError(
        "cannot load liblivemig_c.so; build it (`cargo build -p livemig-c --release`) and set "
        "LIVEMIG_LIBRARY to its path. Tried: " + "; ".join(errors or ["nothing"])
    )


lib = _load()

OK = 0
ERR_CONFLICT = 22
ERR_NOT_IN_CATALOG = 23
ERR_IO = 27
ERR_HYPERVISOR = 26
ERR_RUNNING = 105
ERR_ROLLED_BACK = 106
# livemig_run_options.delta_op_priority: Ceph's client default, not raised.
DELTA_PRIORITY_CEPH_DEFAULT = -1


class Backing(Structure):
    _fields_ = [
        ("cluster", c_char_p),
        ("pool", c_char_p),
        ("pool_namespace", c_char_p),
        ("image", c_char_p),
    ]


class Volume(Structure):
    _fields_ = [
        ("id", c_char_p),
        ("size", c_uint64),
        ("status", c_int32),
        ("migration", c_char_p),
        ("backing", Backing),
        ("location", c_char_p),
    ]


class Attachment(Structure):
    _fields_ = [
        ("volume_id", c_char_p),
        ("instance_id", c_char_p),
        ("device", c_char_p),
        ("access_kind", c_int32),
        ("access_socket", c_char_p),
        ("connection", Backing),
    ]


class AttachmentList(Structure):
    _fields_ = [
        ("volume_id", c_char_p),
        ("attachments", POINTER(Attachment)),
        ("count", c_size_t),
    ]


class AttachmentKey(Structure):
    _fields_ = [("volume_id", c_char_p), ("instance_id", c_char_p)]


class Instance(Structure):
    _fields_ = [("id", c_char_p), ("name", c_char_p)]


class Change(Structure):
    _fields_ = [
        ("purpose", c_int32),
        ("expect_volumes", POINTER(Volume)),
        ("expect_volumes_count", c_size_t),
        ("expect_no_volumes", POINTER(c_char_p)),
        ("expect_no_volumes_count", c_size_t),
        ("expect_attachments", POINTER(AttachmentList)),
        ("expect_attachments_count", c_size_t),
        ("put_volumes", POINTER(Volume)),
        ("put_volumes_count", c_size_t),
        ("remove_volumes", POINTER(c_char_p)),
        ("remove_volumes_count", c_size_t),
        ("put_attachments", POINTER(Attachment)),
        ("put_attachments_count", c_size_t),
        ("remove_attachments", POINTER(AttachmentKey)),
        ("remove_attachments_count", c_size_t),
        ("put_instances", POINTER(Instance)),
        ("put_instances_count", c_size_t),
    ]


GET_VOLUME = CFUNCTYPE(c_int32, c_void_p, c_char_p, c_void_p)
LIST_VOLUMES = CFUNCTYPE(c_int32, c_void_p, c_void_p)
LIST_ATTACHMENTS = CFUNCTYPE(c_int32, c_void_p, c_char_p, c_void_p)
COMPARE_AND_SWAP = CFUNCTYPE(c_int32, c_void_p, POINTER(Change))
ATTACHMENT_CALL = CFUNCTYPE(c_int32, c_void_p, POINTER(Attachment))
REPOINT = CFUNCTYPE(c_int32, c_void_p, POINTER(Attachment), POINTER(Backing))


class CatalogCallbacks(Structure):
    _fields_ = [
        ("user_data", c_void_p),
        ("get_volume", GET_VOLUME),
        ("list_volumes", LIST_VOLUMES),
        ("list_attachments", LIST_ATTACHMENTS),
        ("compare_and_swap", COMPARE_AND_SWAP),
    ]


class HypervisorCallbacks(Structure):
    _fields_ = [
        ("user_data", c_void_p),
        ("hold", ATTACHMENT_CALL),
        ("resume", ATTACHMENT_CALL),
        ("repoint", REPOINT),
    ]


class Config(Structure):
    _fields_ = [
        ("conf_path", c_char_p),
        ("client_id", c_char_p),
        ("keyring", c_char_p),
        ("jobs_pool", c_char_p),
        ("connect_timeout_secs", c_uint32),
    ]


class RunOptions(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("engine", c_int32),
        ("bwlimit_bytes_per_sec", c_uint64),
        ("in_flight_bytes", c_uint64),
        ("cutover_bytes", c_uint64),
        ("stall_rounds", c_uint32),
        ("max_rounds", c_uint32),
        ("on_stall", c_int32),
        ("fence_timeout_ms", c_uint64),
        ("keep_source", c_uint8),
        ("trash_delay_secs", c_uint64),
        ("mirror_stall_ms", c_uint64),
        ("delta_op_priority", c_int32),
        ("copy_mode", c_int32),
        ("whole_object_from_permille", c_uint32),
        ("data_pool", c_char_p),
        ("location", c_char_p),
    ]


class Progress(Structure):
    _fields_ = [
        ("phase", c_char * 32),
        ("running", c_uint8),
        ("result", c_int32),
        ("round", c_uint32),
        ("bytes_total", c_uint64),
        ("bytes_done", c_uint64),
        ("bytes_per_sec", c_uint64),
    ]


def _declare(name: str, restype, *argtypes) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_declare("livemig_version", c_char_p)
_declare("livemig_last_error_message", c_char_p)
_declare("livemig_last_error_code", c_int32)
_declare("livemig_code_name", c_char_p, c_int32)
# Strings livemig returns are taken as raw pointers so that they can be freed.
_declare("livemig_string_free", c_int32, c_void_p)
_declare(
    "livemig_connect",
    c_int32,
    POINTER(Config),
    POINTER(CatalogCallbacks),
    POINTER(HypervisorCallbacks),
    POINTER(c_void_p),
)
_declare("livemig_migrator_free", c_int32, c_void_p)
_declare("livemig_precheck", c_int32, c_void_p, c_char_p, c_char_p, POINTER(c_void_p))
_declare("livemig_add_cluster", c_int32, c_void_p, c_char_p, c_char_p, c_char_p, c_char_p)
_declare("livemig_start", c_int32, c_void_p, c_char_p, c_char_p, POINTER(RunOptions), POINTER(c_void_p))
_declare("livemig_resume", c_int32, c_void_p, c_char_p, POINTER(RunOptions))
_declare("livemig_wait", c_int32, c_void_p, c_char_p, c_int64)
_declare("livemig_get_progress", c_int32, c_void_p, c_char_p, POINTER(Progress))
_declare("livemig_status", c_int32, c_void_p, c_char_p, POINTER(c_void_p))
_declare("livemig_pause", c_int32, c_void_p, c_char_p)
_declare("livemig_abort", c_int32, c_void_p, c_char_p, c_char_p)
_declare("livemig_sync_start", c_int32, c_void_p, c_char_p, c_char_p, POINTER(RunOptions), c_uint32, POINTER(c_void_p))
_declare("livemig_sync_status", c_int32, c_void_p, c_char_p, POINTER(c_void_p))
_declare("livemig_sync_cutover", c_int32, c_void_p, c_char_p, c_uint32)
_declare("livemig_sync_stop", c_int32, c_void_p, c_char_p, c_uint32)
_declare("livemig_sync_failover", c_int32, c_void_p, c_char_p, c_int32, POINTER(c_void_p))
_declare("livemig_sync_resync", c_int32, c_void_p, c_char_p, POINTER(RunOptions), c_uint32, POINTER(c_void_p))
_declare("livemig_callback_error", c_int32, c_char_p)
_declare("livemig_records_add_volume", c_int32, c_void_p, POINTER(Volume))
_declare("livemig_records_add_attachment", c_int32, c_void_p, POINTER(Attachment))


def take_string(ptr: c_void_p) -> str:
    """Copies a string livemig returned and frees it."""
    if not ptr.value:
        return ""
    try:
        return ctypes.string_at(ptr.value).decode()
    finally:
        lib.livemig_string_free(ptr)
