"""`<run.dir>/curriculum.json`: the plan, and per stage what happened: steps and tokens trained,
retries, and each gate attempt (step, short-context loss, gate result, decision).

    {"name": "tiny", "status": "running | completed | stopped | interrupted", "message": ...,
     "plan": {...},                      CurriculumPlan.to_dict()
     "initial_short_loss": 8.31,         validation loss of the initial model (or null)
     "stages": [{"stage": "foundation", "index": 0, "status": "pending | training | passed |
                 failed | continued", "steps": 24, "tokens": 49152, "retries": 0,
                 "attempts": [{"attempt": 0, "step": 24, "stage_steps": 24,
                               "stage_tokens": 49152, "consumed_tokens": 49152,
                               "short_loss": 6.1, "short_loss_before": 8.31,
                               "gate": {"passed": true, "reasons": [], "niah": null,
                                        "criteria": {...}},
                               "decision": "next"}]}, ...]}

Every rank keeps the same copy (rank 0 reads the file and broadcasts it; every rank then makes
the same updates); rank 0 writes it (tmp + os.replace) after each change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from exaone_train.parallel import ranks

FILE = "curriculum.json"


def _broadcast(obj: Any) -> Any:
    if ranks.world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class CurriculumRecord:
    def __init__(self, run_dir: Path, plan: dict[str, Any], fresh: bool) -> None:
        """`fresh`: the run starts from scratch (an old file is replaced)."""
        self.path = Path(run_dir) / FILE
        old = None
        if ranks.is_rank0() and not fresh and self.path.is_file():
            old = json.loads(self.path.read_text())
        old = _broadcast(old)
        self.data: dict[str, Any] = old or {"initial_short_loss": None}
        by_name = {s["stage"]: s for s in self.data.get("stages", [])}
        self.data.update(name=plan["name"], plan=plan, status="running", message=None)
        self.data["stages"] = [by_name.get(s["name"]) or self._blank(i, s["name"])
                               for i, s in enumerate(plan["stages"])]

    @staticmethod
    def _blank(index: int, name: str) -> dict[str, Any]:
        return {"stage": name, "index": index, "status": "pending", "steps": 0, "tokens": 0,
                "retries": 0, "attempts": []}

    def stage(self, index: int) -> dict[str, Any]:
        return self.data["stages"][index]

    def rewind(self, stage_index: int, step: int) -> None:
        """Resuming at `step` in stage `stage_index`: forget what was recorded after it."""
        for st in self.data["stages"]:
            if st["index"] > stage_index:
                st.update(self._blank(st["index"], st["stage"]))
            else:
                st["attempts"] = [a for a in st["attempts"] if a["step"] <= step]
        self.stage(stage_index)["status"] = "training"

    def find(self, index: int, attempt: int, step: int, crit: dict) -> dict[str, Any] | None:
        """The recorded gate attempt of this stage-final checkpoint, if its criteria match."""
        for a in self.stage(index)["attempts"]:
            if a["attempt"] == attempt and a["step"] == step and a["gate"]["criteria"] == crit:
                return a
        return None

    def progress(self, index: int, steps: int, tokens: int) -> None:
        self.stage(index).update(steps=steps, tokens=tokens, status="training")

    def add_attempt(self, index: int, entry: dict[str, Any]) -> None:
        st = self.stage(index)
        st["attempts"] = [a for a in st["attempts"] if a["attempt"] != entry["attempt"]]
        st["attempts"].append(entry)
        st["retries"] = entry["attempt"]
        st["status"] = {"next": "passed", "continue": "continued", "stop": "failed",
                        "retry": "training"}[entry["decision"]]
        self.write()

    def finish(self, status: str, message: str | None = None) -> None:
        self.data.update(status=status, message=message)
        self.write()

    def write(self) -> None:
        if not ranks.is_rank0():
            return
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)
