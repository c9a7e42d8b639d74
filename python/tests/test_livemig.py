"""The Python binding and the reference control plane against the real cluster.

Run by ffi/livemig-c/tests/python.rs, which provides the environment:
CEPH_CONF (the test cluster), LIVEMIG_LIBRARY (the library just built),
LIVEMIG_TEST_INSTANCE (the test instance binary) and the pools in
LIVEMIG_PY_{JOBS,SRC,DST}_POOL. Without a cluster these tests fail, saying
how to get one.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import unittest
import unittest.mock
import uuid

import control_plane as cp
import livemig
from livemig import _native

CONF = os.environ.get("CEPH_CONF", "")
JOBS = os.environ.get("LIVEMIG_PY_JOBS_POOL", "livemig-py-jobs")
SRC = os.environ.get("LIVEMIG_PY_SRC_POOL", "livemig-py-src")
DST = os.environ.get("LIVEMIG_PY_DST_POOL", "livemig-py-dst")
# A second cluster with a DST pool, for moves between clusters.
CONF_2 = os.environ.get("LIVEMIG_PY_CONF_2", "")
MiB = 1 << 20


def setUpModule() -> None:
    if not CONF or not os.path.isfile(CONF) or not CONF_2 or not os.path.isfile(CONF_2):
        raise RuntimeError(
            "these tests need two real Ceph clusters: run scripts/test, or start them with "
            "`scripts/dev-cluster up DIR` and set CEPH_CONF and LIVEMIG_PY_CONF_2 to their ceph.conf"
        )


def rbd(*args: str, stdin: bytes = b"") -> bytes:
    out = subprocess.run(["rbd", "-c", CONF, *args], input=stdin, capture_output=True)
    if out.returncode != 0:
        raise AssertionError(f"rbd {' '.join(args)} failed: {out.stderr.decode()}")
    return out.stdout


def image_bytes(spec: str) -> bytes:
    return rbd("export", spec, "-")


def image_exists(pool: str, name: str) -> bool:
    return name in rbd("ls", pool).decode().split()


def make_image(name: str, size: int = 8 * MiB, seed: int = 1) -> bytes:
    """An image in SRC with random data in a few places and holes elsewhere."""
    rng = random.Random(seed)
    data = bytearray(size)
    for off in (0, size // 2, size - 300 * 1024):
        data[off : off + 256 * 1024] = rng.randbytes(256 * 1024)
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        rbd("import", f.name, f"{SRC}/{name}")
    return bytes(data)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"



class ErrorCodesTest(unittest.TestCase):
    """Python's exceptions and constants agree with the library's error table
    (which the C library's livemig_code_name serves)."""

    def test_every_code_has_its_class_and_no_class_is_stale(self) -> None:
        by_code = {
            cls.code: cls
            for cls in vars(livemig).values()
            if isinstance(cls, type) and issubclass(cls, livemig.LivemigError) and cls is not livemig.LivemigError
        }
        named = {}
        for code in range(1, 256):
            name = _native.lib.livemig_code_name(code).decode()
            if name != "unknown":
                named[code] = name
        self.assertEqual(sorted(by_code), sorted(named), "codes with a Python class vs codes the library names")
        for code, cls in by_code.items():
            stem = "".join(w.capitalize() for w in named[code].split("_"))
            self.assertIn(cls.__name__, {stem, stem + "Error"}, f"code {code} ({named[code]})")

    def test_native_constants_are_the_library_s(self) -> None:
        for attr, value in vars(_native).items():
            if attr.startswith("ERR_"):
                self.assertEqual(_native.lib.livemig_code_name(value).decode(), attr[4:].lower(), attr)

class Plane:
    """A fresh control-plane database with one registered volume."""

    def __init__(self, test: unittest.TestCase, volume_id: str, image: str, size: int):
        self.dir = tempfile.TemporaryDirectory()
        test.addCleanup(self.dir.cleanup)
        self.db = cp.Database(os.path.join(self.dir.name, "cp.sqlite"))
        self.catalog = cp.SqliteCatalog(self.db)
        with self.db.transaction() as conn:
            cp.Database.put_volume(
                conn,
                livemig.Volume(volume_id, size, livemig.VolumeStatus.AVAILABLE, livemig.Backing(SRC, image), None, "ceph"),
            )

    def migrator(self, catalog=None, hypervisor=None) -> livemig.Migrator:
        return livemig.Migrator(CONF, jobs_pool=JOBS, catalog=catalog or self.catalog, hypervisor=hypervisor)


class DetachedMigrations(unittest.TestCase):
    def test_the_reference_control_plane_migrates_a_volume(self):
        image = unique("py-ok")
        data = make_image(image)
        plane = Plane(self, "vol-1", image, len(data))
        out = io.StringIO()
        with plane.migrator() as m:
            # The new image keeps its data objects in another pool (here SRC).
            options = livemig.RunOptions(keep_source=True, data_pool=SRC)
            job = cp.migrate(m, "vol-1", DST, options, out=out)
            status = job.status()
        self.assertEqual(status["phase_name"], "done")
        self.assertIn(f"job {job.id}: done", out.getvalue())
        v = plane.db.get_volume("vol-1")
        self.assertEqual((v.backing.pool, v.backing.image, v.migration), (DST, image, None))
        self.assertEqual(v.status, livemig.VolumeStatus.AVAILABLE)
        self.assertEqual(image_bytes(f"{DST}/{image}"), data)
        info = json.loads(rbd("info", "--format", "json", f"{DST}/{image}"))
        self.assertEqual(info.get("data_pool"), SRC)
        purposes = [p for (p,) in plane.db.query("SELECT purpose FROM changes ORDER BY seq")]
        self.assertEqual(purposes, ["mark", "switch", "release"])

    def test_a_volume_moves_to_another_cluster(self):
        image = unique("py-xc")
        data = make_image(image, seed=9)
        plane = Plane(self, "vol-x", image, len(data))
        before = plane.db.volumes()
        with plane.migrator() as m:
            # A cluster this migrator was not given: refused, nothing changed.
            with self.assertRaises(livemig.LivemigError) as ctx:
                m.start("vol-x", f"b:{DST}")
            self.assertIn("`b`", str(ctx.exception))
            self.assertEqual(plane.db.volumes(), before)
            m.add_cluster("b", CONF_2)
            job = m.start("vol-x", f"b:{DST}", livemig.RunOptions(location="site-b"))
            job.wait()
        v = plane.db.get_volume("vol-x")
        self.assertEqual((v.backing.cluster, v.backing.pool, v.location), ("b", DST, "site-b"))
        out = subprocess.run(["rbd", "-c", CONF_2, "export", "--no-progress", f"{DST}/{image}", "-"], capture_output=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, data)

    def test_progress_iterator_ends_with_the_final_state(self):
        image = unique("py-watch")
        data = make_image(image, size=16 * MiB, seed=2)
        plane = Plane(self, "vol-w", image, len(data))
        with plane.migrator() as m:
            # A bandwidth limit makes the copy last long enough to be watched.
            job = m.start("vol-w", DST, livemig.RunOptions(bwlimit_bytes_per_sec=2 * MiB))
            seen, methods = [], set()
            for p in job.watch(interval=0.1):
                seen.append(p)
                # The status says who moves the bytes while it copies.
                copy = job.status().get("copy") if p.running and p.phase == "copying" else None
                if copy:
                    methods.add(copy["method"])
            job.wait()
        self.assertEqual(methods, {"server_side"})
        self.assertTrue(seen[0].running)
        self.assertFalse(seen[-1].running)
        self.assertEqual(seen[-1].phase, "done")
        self.assertIsNone(seen[-1].result)
        self.assertIn("copying", {p.phase for p in seen})
        copied = [p for p in seen if p.phase == "copying" and p.bytes_total]
        self.assertTrue(copied, "copy progress was reported")
        self.assertLessEqual(copied[-1].bytes_done, copied[-1].bytes_total)

    def test_refused_switch_rolls_back_and_says_why(self):
        image = unique("py-frozen")
        data = make_image(image, seed=3)
        plane = Plane(self, "vol-f", image, len(data))
        before = plane.db.get_volume("vol-f")
        with plane.db.transaction() as conn:
            conn.execute("INSERT INTO frozen VALUES ('vol-f')")
        with plane.migrator() as m:
            job = m.start("vol-f", DST)
            with self.assertRaises(livemig.RolledBack) as ctx:
                job.wait()
            self.assertEqual(job.progress().phase, "aborted")
        self.assertIn("frozen by the operator", str(ctx.exception))
        self.assertEqual(plane.db.get_volume("vol-f"), before)
        self.assertFalse(image_exists(DST, image))
        self.assertEqual(image_bytes(f"{SRC}/{image}"), data)

    def test_a_callback_that_raises_mid_flow_stops_the_job_cleanly_and_resume_finishes(self):
        image = unique("py-raise")
        data = make_image(image, seed=4)
        plane = Plane(self, "vol-r", image, len(data))

        class FlakyCatalog(cp.SqliteCatalog):
            failures = 1

            def compare_and_swap(self, change):
                if change.purpose == livemig.ChangePurpose.RELEASE and self.failures:
                    self.failures -= 1
                    raise RuntimeError("database is locked")
                super().compare_and_swap(change)

        with plane.migrator(catalog=FlakyCatalog(plane.db)) as m:
            job = m.start("vol-r", DST, livemig.RunOptions(keep_source=True))
            with self.assertRaises(livemig.IoError) as ctx:
                job.wait()
            self.assertIn("RuntimeError: database is locked", str(ctx.exception))
            # Switched but not released: the catalog names the destination,
            # still held by the job; nothing lost.
            v = plane.db.get_volume("vol-r")
            self.assertEqual((v.backing.pool, v.migration), (DST, job.id))
            self.assertEqual(image_bytes(f"{DST}/{image}"), data)
            job.resume()
            job.wait()
        v = plane.db.get_volume("vol-r")
        self.assertEqual((v.backing.pool, v.migration), (DST, None))
        self.assertEqual(image_bytes(f"{DST}/{image}"), data)

    def test_pause_resume_then_abort_restores_everything(self):
        image = unique("py-abort")
        data = make_image(image, size=16 * MiB, seed=9)
        plane = Plane(self, "vol-a", image, len(data))
        before = plane.db.get_volume("vol-a")
        with plane.migrator() as m:
            job = m.start("vol-a", DST, livemig.RunOptions(bwlimit_bytes_per_sec=1 * MiB))
            time.sleep(1.5)
            job.pause()
            p = job.progress()
            self.assertFalse(p.running)
            self.assertIsInstance(p.result, livemig.Cancelled)
            self.assertEqual(plane.db.get_volume("vol-a").migration, job.id, "paused, still held by the job")
            job.resume(livemig.RunOptions(bwlimit_bytes_per_sec=1 * MiB))
            self.assertTrue(job.progress().running)
            with self.assertRaises(livemig.Running):
                job.wait(timeout=0.2)
            job.abort("the operator changed their mind")
            self.assertEqual(job.status()["phase_name"], "aborted")
            with self.assertRaises(livemig.RolledBack) as ctx:
                job.wait()
            self.assertIn("changed their mind", str(ctx.exception))
        self.assertEqual(plane.db.get_volume("vol-a"), before)
        self.assertFalse(image_exists(DST, image))
        self.assertEqual(image_bytes(f"{SRC}/{image}"), data)
        purposes = [p for (p,) in plane.db.query("SELECT purpose FROM changes ORDER BY seq")]
        self.assertEqual(purposes, ["mark", "restore"])

    def test_bad_input_raises_distinct_errors_and_changes_nothing(self):
        image = unique("py-bad")
        data = make_image(image, seed=5)
        plane = Plane(self, "vol-b", image, len(data))
        before = plane.db.volumes()
        with plane.migrator() as m:
            with self.assertRaises(livemig.NotInCatalog):
                m.precheck("no-such-volume", DST)
            with self.assertRaises(livemig.PoolNotFound) as ctx:
                m.start("vol-b", "no-such-pool")
            self.assertIn("no-such-pool", str(ctx.exception))
            with self.assertRaises(livemig.PoolNotFound) as ctx:
                m.start("vol-b", DST, livemig.RunOptions(data_pool="no-such-data-pool"))
            self.assertIn("no-such-data-pool", str(ctx.exception))
            with self.assertRaises(livemig.SameImage):
                m.start("vol-b", f"{SRC}/{image}")
            with self.assertRaises(livemig.InvalidInput) as ctx:
                m.start("vol-b", DST, livemig.RunOptions(engine="qemu"))
            self.assertIn("not attached", str(ctx.exception))
        self.assertEqual(plane.db.volumes(), before)
        self.assertEqual(plane.db.query("SELECT count(*) FROM changes"), [(0,)])

    def test_cli_of_the_reference_control_plane(self):
        image = unique("py-cli")
        data = make_image(image, seed=6)
        with tempfile.TemporaryDirectory() as d:
            db = os.path.join(d, "cp.sqlite")
            script = cp.__file__

            def run(*args: str) -> str:
                out = subprocess.run([sys.executable, script, "--db", db, *args], capture_output=True, text=True)
                self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
                return out.stdout

            run("init")
            run("add-volume", "vol-cli", "--pool", SRC, "--image", image, "--size", str(len(data)))
            printed = run("migrate", "vol-cli", DST, "--conf", CONF, "--jobs-pool", JOBS)
            self.assertIn(": done", printed)
            shown = run("show")
            self.assertIn(f"vol-cli available {DST}/{image} migration=-", shown)
        self.assertEqual(image_bytes(f"{DST}/{image}"), data)
        # The source went to the RBD trash (the default retire policy).
        self.assertFalse(image_exists(SRC, image))


class LiveMigrationWithPythonHypervisor(unittest.TestCase):
    def writing_instance(self, volume: str, tag: str):
        """A 32 MiB volume attached to a running test instance that writes to
        it, registered in a new reference control plane. Returns the plane,
        the image, the instance and the log of its acknowledged writes."""
        binary = os.environ.get("LIVEMIG_TEST_INSTANCE", "")
        self.assertTrue(os.path.isfile(binary), "LIVEMIG_TEST_INSTANCE must name livemig-test-instance")
        image = unique(tag)
        rbd("create", "--size", "32M", f"{SRC}/{image}")
        plane = Plane(self, volume, image, 32 * MiB)
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        sock, log = os.path.join(d.name, "ctl.sock"), os.path.join(d.name, "writes.log")
        inst = subprocess.Popen(
            [binary, "--image", f"{SRC}/{image}", "--conf", CONF, "--control", sock, "--log", log,
             "--rate", "100", "--depth", "2", "--max-size", str(256 * 1024), "--seed", "7"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

        def reap() -> None:
            if inst.poll() is None:
                inst.kill()
                inst.wait()
            inst.stdout.close()
            inst.stderr.close()

        self.addCleanup(reap)
        self.assertEqual(inst.stdout.readline().strip(), "ready")
        with plane.db.transaction() as conn:
            conn.execute("INSERT INTO instances VALUES ('vm-1', 'web')")
            attached = livemig.Volume(
                volume, 32 * MiB, livemig.VolumeStatus.IN_USE, livemig.Backing(SRC, image), None, "ceph"
            )
            cp.Database.put_volume(conn, attached)
            cp.Database.put_attachment(
                conn,
                livemig.Attachment(
                    volume, "vm-1", "vdb",
                    livemig.Access(livemig.AccessKind.TEST_INSTANCE, sock),
                    livemig.Backing(SRC, image),
                ),
            )
        time.sleep(1)  # let it write before the copy starts
        return plane, image, inst, log

    def stop_and_verify(self, plane, volume: str, image: str, inst, log: str) -> None:
        """Stops the instance (still running, on the destination) and checks
        that every write it acknowledged is on the destination."""
        time.sleep(0.5)  # writes continue on the destination
        self.assertIsNone(inst.poll(), "the instance kept running")
        cp.ComputeAgent()._command(plane.db.attachments(volume)[0], "stop")
        inst.wait(timeout=60)
        self.assertEqual(inst.returncode, 0, inst.stderr.read())
        # The catalog and the attachment name the destination.
        self.assertEqual(plane.db.get_volume(volume).backing.pool, DST)
        self.assertEqual(plane.db.attachments(volume)[0].connection.pool, DST)
        verify = subprocess.run(
            [os.environ["LIVEMIG_TEST_INSTANCE"], "--verify", "--image", f"{DST}/{image}", "--conf", CONF,
             "--log", log],
            capture_output=True, text=True,
        )
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)

    def test_attached_volume_moves_with_every_acknowledged_write(self):
        plane, image, inst, log = self.writing_instance("vol-live", "py-live")
        agent = cp.ComputeAgent()
        out = io.StringIO()
        with plane.migrator(hypervisor=agent) as m:
            # The deltas at Ceph's client priority (the default raises it).
            options = livemig.RunOptions(keep_source=True, delta_op_priority=0)
            job = cp.migrate(m, "vol-live", DST, options, out=out)
            status = job.status()
        self.stop_and_verify(plane, "vol-live", image, inst, log)
        self.assertEqual(status["phase_name"], "done")
        self.assertEqual(status["live"]["policy"]["delta_op_priority"], 0)
        cutover = status["live"]["cutover"]
        self.assertGreater(cutover["resumed_at_ms"], 0)
        self.assertIn("downtime", out.getvalue())
        self.assertEqual(agent.calls, ["hold", "repoint", "resume"])

    def test_a_synced_volume_cuts_over_with_every_acknowledged_write(self):
        plane, image, inst, log = self.writing_instance("vol-sync", "py-sync")
        agent = cp.ComputeAgent()
        with plane.migrator(hypervisor=agent) as m:
            with self.assertRaises(livemig.JobNotFound):
                m.sync_status("vol-sync")
            # Nothing to fail over, nor to sync back to.
            with self.assertRaises(livemig.JobNotFound):
                m.sync_failover("vol-sync", force=True)
            with self.assertRaises(livemig.JobNotFound):
                m.sync_resync("vol-sync")
            job = m.sync_start("vol-sync", DST, livemig.RunOptions(keep_source=True), interval_ms=300)
            deadline = time.monotonic() + 120
            while True:
                sync = m.sync_status("vol-sync")
                if sync["rounds"] >= 2:
                    break
                self.assertLess(time.monotonic(), deadline, f"the sync applied too few rounds: {sync}")
                time.sleep(0.2)
            self.assertEqual((sync["job"], sync["phase"]), (job.id, "replaying"))
            self.assertIsNotNone(sync["rpo_ms"])
            self.assertIsNotNone(sync["behind_bytes"])
            # Still syncing, not moved: the instance has not been held.
            self.assertEqual(agent.calls, [])
            m.sync_cutover("vol-sync")
            job.wait()
            status = job.status()
        self.stop_and_verify(plane, "vol-sync", image, inst, log)
        self.assertEqual(status["phase_name"], "done")
        self.assertGreaterEqual(status["sync"]["rounds"], 2)
        self.assertEqual(agent.calls, ["hold", "repoint", "resume"])


class Misuse(unittest.TestCase):
    def test_closed_migrator_and_freed_handles_give_errors_not_crashes(self):
        m = livemig.Migrator(CONF, jobs_pool=JOBS)
        handle = m._handle
        m.close()
        m.close()  # idempotent in Python
        with self.assertRaises(livemig.BadHandle):
            m.job("whatever").progress()
        # The raw ABI: a second free and a forged handle are detected.
        self.assertEqual(_native.lib.livemig_migrator_free(handle), livemig.BadHandle.code)
        self.assertEqual(_native.lib.livemig_migrator_free(12345), livemig.BadHandle.code)
        self.assertEqual(_native.lib.livemig_migrator_free(None), livemig.BadHandle.code)
        self.assertIn("already freed", _native.lib.livemig_last_error_message().decode())
        # A string freed twice.
        report = ctypes.c_void_p()
        with livemig.Migrator(CONF, jobs_pool=JOBS) as m2:
            _native.lib.livemig_precheck(m2._handle, b"nope", DST.encode(), ctypes.byref(report))
        self.assertEqual(_native.lib.livemig_string_free(report), 0)
        self.assertEqual(_native.lib.livemig_string_free(report), livemig.BadHandle.code)

    def test_a_records_handle_kept_past_its_callback_is_refused(self):
        image = unique("py-records")
        data = make_image(image, seed=8)
        plane = Plane(self, "vol-k", image, len(data))
        kept = []
        calls_from_inside = []

        with plane.migrator() as m:
            # Capture a records handle through the raw callback path.
            original = _native.lib.livemig_records_add_volume

            def spy(records, volume):
                kept.append(records)
                return original(records, volume)

            with unittest.mock.patch.object(_native.lib, "livemig_records_add_volume", spy):
                m.precheck("vol-k", DST)
            # A blocking livemig call made from inside a callback is refused.
            class Reentrant(cp.SqliteCatalog):
                def list_attachments(self, volume_id):
                    try:
                        m.job("x").status()
                    except livemig.LivemigError as e:
                        calls_from_inside.append(type(e))
                    return super().list_attachments(volume_id)

            with plane.migrator(catalog=Reentrant(plane.db)) as m3:
                m3.precheck("vol-k", DST)
        self.assertTrue(kept)
        v = livemig.Volume("x", 1, livemig.VolumeStatus.AVAILABLE, livemig.Backing("p", "i"))
        code = _native.lib.livemig_records_add_volume(kept[0], ctypes.byref(v._c()))
        self.assertEqual(code, livemig.BadHandle.code)
        self.assertEqual(calls_from_inside, [livemig.InCallback])


if __name__ == "__main__":
    unittest.main()
