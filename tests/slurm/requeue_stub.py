"""Stands in for the trainer's checkpoint-and-exit under Slurm: the first time a rank runs for a
given run.dir it "saves a checkpoint" (a marker file per rank) and exits 3, the trainer's
"please requeue" status; when run again it finds the marker, "resumes" and exits 0.
Invoked per rank by torchrun as `python requeue_stub.py --recipe R key=value...`."""

import json
import os
import signal
import sys
import time
from pathlib import Path


def say(line: str) -> None:
    """One write per line: both ranks share the job's log, and print() may write the text and
    the newline separately, which interleaves two ranks' lines into one."""
    os.write(sys.stdout.fileno(), (line + "\n").encode())


# With STUB_WAIT_FOR_USR1=1 the first run works until Slurm's time-limit warning (SIGUSR1)
# arrives, as the trainer does, and only then saves and exits 3.
got_usr1 = []
signal.signal(signal.SIGUSR1, lambda *_: got_usr1.append(time.time()))

args = sys.argv[1:]
run_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("run.dir=")))
rank = int(os.environ["RANK"])
marker = run_dir / f"checkpoint.rank{rank}"
info = {"rank": rank, "world_size": int(os.environ["WORLD_SIZE"]),
        "local_rank": int(os.environ["LOCAL_RANK"]), "master_addr": os.environ["MASTER_ADDR"],
        "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")), "argv": args}
if marker.exists():
    say("STUB resumed " + json.dumps(info))
    sys.exit(0)
if os.environ.get("STUB_WAIT_FOR_USR1") == "1":
    say(f"STUB rank {rank} waiting for SIGUSR1")
    (run_dir / f"ready.rank{rank}").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / f"ready.rank{rank}").write_text("")
    deadline = time.time() + 60
    while not got_usr1 and time.time() < deadline:
        time.sleep(0.1)
    say(f"STUB rank {rank} got SIGUSR1: {bool(got_usr1)} ({len(got_usr1)} times)")
    if not got_usr1:
        sys.exit(1)
run_dir.mkdir(parents=True, exist_ok=True)
marker.write_text("saved\n")
say("STUB saved-and-exit-3 " + json.dumps(info))
# As the trainer: save, then a barrier, then exit 3. torchrun stops the other ranks as soon as
# one exits, so a rank leaving before the others have saved would lose their checkpoint. A
# file barrier stands in for the trainer's collective one.
deadline = time.time() + 30
while (len(list(run_dir.glob("checkpoint.rank*"))) < int(os.environ["WORLD_SIZE"])
       and time.time() < deadline):
    time.sleep(0.05)
sys.exit(3)
