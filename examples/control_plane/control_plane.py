#!/usr/bin/env python3
"""A minimal Cinder/Nova-like control plane that migrates volumes with livemig.

Read this file as the how-to for embedding livemig in Python:

1. ``Database`` holds the control plane's own tables in SQLite: volumes,
   instances, attachments, and an audit log of the changes livemig made.
2. ``SqliteCatalog`` gives livemig that database (``livemig.Catalog``).
   Reads are plain SELECTs; ``compare_and_swap`` is one SQLite transaction
   (``BEGIN IMMEDIATE``) that checks every expectation, applies every
   change, or rolls back and raises ``livemig.Conflict``. It is also where
   the control plane applies its own rules to livemig's changes: here,
   volumes on the freeze list may not switch (the migration rolls back).
3. ``ComputeAgent`` is the hypervisor side (``livemig.Hypervisor``): it
   holds, re-points and resumes the instance using a volume. This one talks
   to livemig's test instance over its control socket; a real one would ask
   the compute node's agent (e.g. over RPC).
4. ``migrate`` runs a migration end to end and prints its progress.

Command line (the test suite runs it against the real cluster)::

    control_plane.py --db cp.sqlite init
    control_plane.py --db cp.sqlite add-volume vol-1 --pool volumes --image disk1 --size 67108864
    control_plane.py --db cp.sqlite migrate vol-1 fast --conf /etc/ceph/ceph.conf --jobs-pool livemig
    control_plane.py --db cp.sqlite show
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sqlite3
import sys
import threading
import time
from typing import Iterator, List, Optional, Sequence

import livemig
from livemig import Access, AccessKind, Attachment, Backing, Change, ChangePurpose, Volume, VolumeStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    status INTEGER NOT NULL,
    migration TEXT,
    cluster TEXT NOT NULL,
    pool TEXT NOT NULL,
    namespace TEXT NOT NULL DEFAULT '',
    image TEXT NOT NULL,
    location TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS attachments (
    volume_id TEXT NOT NULL REFERENCES volumes(id),
    instance_id TEXT NOT NULL REFERENCES instances(id),
    device TEXT NOT NULL,
    access_kind INTEGER NOT NULL,
    access_socket TEXT,
    conn_cluster TEXT NOT NULL,
    conn_pool TEXT NOT NULL,
    conn_namespace TEXT NOT NULL DEFAULT '',
    conn_image TEXT NOT NULL,
    PRIMARY KEY (volume_id, instance_id)
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    purpose TEXT NOT NULL,
    volumes TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS frozen (
    volume_id TEXT PRIMARY KEY
);
"""


class Database:
    """The control plane's own database. One connection per thread: livemig
    calls the catalog from its threads, the service from its own."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        # executescript manages its own transaction.
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: transactions are explicit (BEGIN ... COMMIT).
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the body raises."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, *args) -> List[tuple]:
        return self._conn().execute(sql, args).fetchall()

    # Rows <-> livemig records.

    @staticmethod
    def volume(row: tuple) -> Volume:
        vid, size, status, migration, cluster, pool, ns, image, location = row
        return Volume(vid, size, VolumeStatus(status), Backing(pool, image, ns, cluster), migration, location)

    @staticmethod
    def attachment(row: tuple) -> Attachment:
        vid, iid, device, kind, sock, cluster, pool, ns, image = row
        return Attachment(vid, iid, device, Access(AccessKind(kind), sock), Backing(pool, image, ns, cluster))

    def volumes(self, conn: Optional[sqlite3.Connection] = None) -> List[Volume]:
        rows = (conn or self._conn()).execute("SELECT * FROM volumes ORDER BY id").fetchall()
        return [self.volume(r) for r in rows]

    def get_volume(self, volume_id: str, conn: Optional[sqlite3.Connection] = None) -> Optional[Volume]:
        rows = (conn or self._conn()).execute("SELECT * FROM volumes WHERE id = ?", (volume_id,)).fetchall()
        return self.volume(rows[0]) if rows else None

    def attachments(self, volume_id: str, conn: Optional[sqlite3.Connection] = None) -> List[Attachment]:
        rows = (
            (conn or self._conn())
            .execute("SELECT * FROM attachments WHERE volume_id = ? ORDER BY instance_id", (volume_id,))
            .fetchall()
        )
        return [self.attachment(r) for r in rows]

    @staticmethod
    def put_volume(conn: sqlite3.Connection, v: Volume) -> None:
        b = v.backing
        conn.execute(
            "INSERT OR REPLACE INTO volumes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (v.id, v.size, int(v.status), v.migration, b.cluster, b.pool, b.namespace, b.image, v.location),
        )

    @staticmethod
    def put_attachment(conn: sqlite3.Connection, a: Attachment) -> None:
        c = a.connection
        conn.execute(
            "INSERT OR REPLACE INTO attachments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                a.volume_id, a.instance_id, a.device, int(a.access.kind), a.access.socket,
                c.cluster, c.pool, c.namespace, c.image,
            ),
        )


class SqliteCatalog(livemig.Catalog):
    """livemig's view of the database; every change is one SQLite transaction."""

    def __init__(self, db: Database):
        self.db = db

    def get_volume(self, volume_id: str) -> Volume:
        v = self.db.get_volume(volume_id)
        if v is None:
            raise livemig.NotInCatalog(f"volume `{volume_id}` is not in the control plane's database")
        return v

    def list_volumes(self) -> Sequence[Volume]:
        return self.db.volumes()

    def list_attachments(self, volume_id: str) -> Sequence[Attachment]:
        return self.db.attachments(volume_id)

    def compare_and_swap(self, change: Change) -> None:
        with self.db.transaction() as conn:
            for expected in change.expect_volumes:
                if self.db.get_volume(expected.id, conn) != expected:
                    raise livemig.Conflict(f"volume `{expected.id}` changed in the database")
            for vid in change.expect_no_volumes:
                if self.db.get_volume(vid, conn) is not None:
                    raise livemig.Conflict(f"volume `{vid}` exists")
            for vid, expected_list in change.expect_attachments.items():
                key = lambda a: a.instance_id  # noqa: E731
                if sorted(self.db.attachments(vid, conn), key=key) != sorted(expected_list, key=key):
                    raise livemig.Conflict(f"the attachments of volume `{vid}` changed")
            # The control plane's own rule for the commit point.
            if change.purpose == ChangePurpose.SWITCH:
                for v in change.put_volumes:
                    if conn.execute("SELECT 1 FROM frozen WHERE volume_id = ?", (v.id,)).fetchall():
                        raise livemig.Conflict(f"volume `{v.id}` is frozen by the operator; no switch allowed")
            for v in change.put_volumes:
                self.db.put_volume(conn, v)
            for vid in change.remove_volumes:
                conn.execute("DELETE FROM volumes WHERE id = ?", (vid,))
            for a in change.put_attachments:
                self.db.put_attachment(conn, a)
            for vid, iid in change.remove_attachments:
                conn.execute("DELETE FROM attachments WHERE volume_id = ? AND instance_id = ?", (vid, iid))
            for i in change.put_instances:
                conn.execute("INSERT OR REPLACE INTO instances VALUES (?, ?)", (i.id, i.name))
            touched = ",".join(sorted({v.id for v in change.put_volumes} | {a.volume_id for a in change.put_attachments}))
            conn.execute(
                "INSERT INTO changes (at, purpose, volumes) VALUES (?, ?, ?)",
                (time.time(), change.purpose.name.lower(), touched),
            )


class ComputeAgent(livemig.Hypervisor):
    """Holds, re-points and resumes instances. This one drives livemig's test
    instance over its control socket (one line per command, `ok`/`err` reply)."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self.calls: List[str] = []

    def _command(self, attachment: Attachment, line: str) -> str:
        if attachment.access.kind != AccessKind.TEST_INSTANCE or not attachment.access.socket:
            raise livemig.HypervisorError(
                f"instance `{attachment.instance_id}` has no control socket this agent knows how to use"
            )
        self.calls.append(line.split()[0])
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                s.connect(attachment.access.socket)
            except OSError as e:
                raise livemig.HypervisorError(
                    f"instance `{attachment.instance_id}` cannot be reached at {attachment.access.socket}: {e}"
                ) from e
            s.sendall(line.encode() + b"\n")
            reply = s.makefile().readline().strip()
        if not reply.startswith("ok"):
            raise livemig.HypervisorError(f"instance `{attachment.instance_id}` refused `{line}`: {reply}")
        return reply[2:].strip()

    def hold(self, attachment: Attachment) -> None:
        self._command(attachment, "hold")

    def resume(self, attachment: Attachment) -> None:
        self._command(attachment, "resume")

    def repoint(self, attachment: Attachment, to: Backing) -> None:
        # Same cluster ("-"): the instance keeps its connection, opens the new image.
        self._command(attachment, f"repoint - {to}")


def migrate(
    migrator: livemig.Migrator,
    volume_id: str,
    destination: str,
    options: Optional[livemig.RunOptions] = None,
    out=sys.stdout,
) -> livemig.Job:
    """Prechecks, starts, follows and finishes one migration; raises if it did not finish."""
    migrator.precheck(volume_id, destination)
    job = migrator.start(volume_id, destination, options)
    print(f"job {job.id}: migrating {volume_id} to {destination}", file=out)
    last = None
    for p in job.watch(interval=0.2):
        line = f"job {job.id}: {p.phase}"
        if p.round:
            line += f" round {p.round}"
        if p.bytes_total:
            line += f" {p.bytes_done}/{p.bytes_total} bytes"
        if line != last:
            print(line, file=out)
            last = line
    job.wait()
    status = job.status()
    cutover = (status.get("live") or {}).get("cutover") or {}
    if cutover.get("resumed_at_ms"):
        print(f"job {job.id}: downtime {cutover['resumed_at_ms'] - cutover['held_at_ms']} ms", file=out)
    return job


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True, help="SQLite database of the control plane")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("init", help="create the tables")
    av = sub.add_parser("add-volume", help="register a volume backed by an existing image")
    av.add_argument("id")
    av.add_argument("--pool", required=True)
    av.add_argument("--image", required=True)
    av.add_argument("--size", type=int, required=True)
    mg = sub.add_parser("migrate", help="migrate a volume to a pool")
    mg.add_argument("volume")
    mg.add_argument("destination")
    mg.add_argument("--conf", help="ceph.conf (default: CEPH_CONF)")
    mg.add_argument("--jobs-pool", default="livemig")
    mg.add_argument("--keep-source", action="store_true")
    sub.add_parser("show", help="print the volumes and the changes livemig made")
    args = ap.parse_args(argv)

    db = Database(args.db)
    if args.cmd == "add-volume":
        with db.transaction() as conn:
            db.put_volume(
                conn,
                Volume(args.id, args.size, VolumeStatus.AVAILABLE, Backing(args.pool, args.image), None, "ceph"),
            )
    elif args.cmd == "migrate":
        try:
            with livemig.Migrator(
                args.conf, jobs_pool=args.jobs_pool, catalog=SqliteCatalog(db), hypervisor=ComputeAgent()
            ) as m:
                migrate(m, args.volume, args.destination, livemig.RunOptions(keep_source=args.keep_source))
        except livemig.LivemigError as e:
            print(f"migration failed: {e}", file=sys.stderr)
            return 1
    elif args.cmd == "show":
        for v in db.volumes():
            print(f"{v.id} {v.status.name.lower()} {v.backing} migration={v.migration or '-'}")
        for seq, at, purpose, vols in db.query("SELECT * FROM changes ORDER BY seq"):
            print(f"change {seq} {purpose} {vols}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
