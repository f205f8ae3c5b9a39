import subprocess
import sys
import time

import pytest

from lambdaflow.file_lock import LockHeld, lock_file, write_holder

HOLD = """
import sys, time
from pathlib import Path
from lambdaflow.file_lock import lock_file, write_holder
handle = lock_file(Path(sys.argv[1]))
write_holder(handle, "the other process")
print("held", flush=True)
time.sleep(60)
"""


def test_a_held_lock_names_its_holder_and_a_killed_holder_leaves_none(tmp_path):
    path = tmp_path / "dir" / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(LockHeld) as held:
            lock_file(path, wait_s=0.5)
        assert held.value.holder == "the other process"
        assert time.monotonic() - started >= 0.5  # it waited before giving up
    finally:
        holder.kill()
        holder.wait()
    handle = lock_file(path)  # SIGKILL released it
    write_holder(handle, "this test")
    handle.close()
    assert path.read_text() == "this test\n"
