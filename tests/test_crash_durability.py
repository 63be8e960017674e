"""Durability: a real writer process killed with SIGKILL at random moments loses nothing it had
acknowledged, and the file passes ``PRAGMA integrity_check``; ``mmchat backup`` copies the database
consistently while that writer keeps writing.

The writer is ``tests/crash_writer.py`` (the store's own ``add_message``, one committed transaction
per message, an ``ack`` line printed after each). A handful of kills run by default; the ``slow``
test does 200.
"""

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import reliability

pytestmark = pytest.mark.reliability

WRITER = Path(__file__).with_name("crash_writer.py")
START_TIMEOUT_S = 60.0  # the writer's Python start-up, on a busy machine
KILL_WINDOW_S = (0.0, 0.3)  # kill this long after the writer is ready (uniform), mid-write
QUICK_KILLS = 5
SLOW_KILLS = 200
BACKUP_AFTER_ACKS = 1_000  # let the writer build up some data (a few MB) before backing up


class Writer:
    """One crash_writer.py process; ``acks`` fills from its stdout as messages are committed."""

    def __init__(self, db: Path, seed: int) -> None:
        self.process = subprocess.Popen([sys.executable, str(WRITER), str(db), str(seed)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
        self.acks: list[tuple[int, str]] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.ready.wait(START_TIMEOUT_S):
            self.kill()
            raise AssertionError(f"writer did not start: {self.process.stderr.read()[-2000:]}")

    def _read(self) -> None:
        for line in self.process.stdout:
            if line == "ready\n":
                self.ready.set()
            elif line.startswith("ack ") and line.endswith("\n"):  # a line cut by the kill is not an ack
                _, message_id, digest = line.split()
                self.acks.append((int(message_id), digest))

    def kill(self) -> list[tuple[int, str]]:
        """SIGKILL, then every ack it printed before dying."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        errors = self.process.stderr.read()
        assert "Traceback" not in errors, errors[-3000:]
        return list(self.acks)


def check_database(db: Path, acks: list[tuple[int, str]]) -> int:
    """integrity_check is ok and every acknowledged message is there, byte for byte; returns the
    number of messages stored. A plain sqlite3 connection: nothing here may repair or move the file."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for message_id, digest in acks:
            row = conn.execute("SELECT content FROM messages WHERE id = ?", (message_id,)).fetchone()
            assert row is not None, f"acknowledged message {message_id} is missing"
            h = hashlib.sha256(row[0].encode())
            for (data,) in conn.execute("SELECT data FROM attachments WHERE message_id = ? ORDER BY id", (message_id,)):
                h.update(data)
            assert h.hexdigest() == digest, f"acknowledged message {message_id} was changed"
        return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    finally:
        conn.close()


def kill_repeatedly(db: Path, kills: int, *, seed: int) -> None:
    rng = random.Random(seed)
    all_acks: list[tuple[int, str]] = []
    for k in range(kills):
        writer = Writer(db, seed * 10_000 + k)
        time.sleep(rng.uniform(*KILL_WINDOW_S))
        acks = writer.kill()
        check_database(db, acks)
        all_acks += acks
        reliability.count()
    stored = check_database(db, all_acks)
    assert len(all_acks) > 0 and stored >= len(all_acks)
    reliability.note(f"{len(all_acks)} acknowledged messages, all present after the kills")


def test_sigkill_loses_no_acknowledged_message_quick(tmp_path):
    kill_repeatedly(tmp_path / "crash.sqlite3", QUICK_KILLS, seed=1)


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_message_200_kills(tmp_path):
    kill_repeatedly(tmp_path / "crash.sqlite3", SLOW_KILLS, seed=2)


def test_store_uses_wal_and_full_sync(tmp_path):
    from mmchat.store import ConversationStore

    store = ConversationStore(tmp_path / "x.sqlite3")
    assert store.db.query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.db.query("PRAGMA synchronous")[0][0] == 2  # FULL
    store.close()


def test_backup_command_while_another_process_writes(data_dir, tmp_path):
    db = data_dir / "mmchat.sqlite3"
    writer = Writer(db, seed=7)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(writer.acks) < BACKUP_AFTER_ACKS and time.monotonic() < deadline:
            time.sleep(0.05)
        before = list(writer.acks)  # acknowledged before the backup started
        target = tmp_path / "backups" / "copy.sqlite3"
        result = subprocess.run([sys.executable, "-m", "mmchat.cli", "backup", str(target)],
                                capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, MMCHAT_DATA_DIR=str(data_dir)))
        during = len(writer.acks) - len(before)
    finally:
        acks = writer.kill()
    assert result.returncode == 0, result.stderr
    assert "backed up" in result.stdout
    assert len(before) >= BACKUP_AFTER_ACKS and during > 0  # the writer really was writing meanwhile
    stored = check_database(target, before)
    assert stored >= len(before)
    assert not Path(f"{target}-wal").exists()  # one self-contained file
    check_database(db, acks)
    reliability.note(f"backup holds {stored} messages; {len(before)} acknowledged before it started, "
                     f"{during} more written during it")


def test_backup_refuses_its_own_database_and_a_temporary_store(tmp_path):
    from mmchat.errors import MMChatError
    from mmchat.store import ConversationStore

    store = ConversationStore(tmp_path / "db.sqlite3")
    with pytest.raises(MMChatError, match="the database itself"):
        store.backup(tmp_path / "db.sqlite3")
    store.close()
    with pytest.raises(MMChatError, match="in-memory"):
        ConversationStore(":memory:").backup(tmp_path / "x.sqlite3")


def test_backup_to_an_impossible_place_is_a_clear_error(data_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = subprocess.run([sys.executable, "-m", "mmchat.cli", "backup", str(blocker / "copy.sqlite3")],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, MMCHAT_DATA_DIR=str(data_dir)))
    assert result.returncode == 1 and "Could not back up" in result.stderr and "Traceback" not in result.stderr


BACKUP_KILLS = 10


def test_a_killed_backup_never_leaves_a_broken_copy(data_dir, tmp_path):
    """SIGKILL `mmchat backup` at random moments: the target is absent or a complete, intact copy."""
    from mmchat.store import ConversationStore

    writer = Writer(data_dir / "mmchat.sqlite3", seed=11)
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(writer.acks) < BACKUP_AFTER_ACKS and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.kill()
    ConversationStore(data_dir / "mmchat.sqlite3").close()  # recover the WAL: the backup reads a settled file
    rng = random.Random(3)
    finished = 0
    for k in range(BACKUP_KILLS):
        target = tmp_path / f"copy-{k}.sqlite3"
        process = subprocess.Popen([sys.executable, "-m", "mmchat.cli", "backup", str(target)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=dict(os.environ, MMCHAT_DATA_DIR=str(data_dir)))
        time.sleep(rng.uniform(0.0, 0.6))  # from start-up to mid-copy or done
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        if target.exists():
            check_database(target, [])
            finished += 1
        reliability.count()
    reliability.note(f"{finished} of {BACKUP_KILLS} backups had finished when killed (intact); the others left no file")
