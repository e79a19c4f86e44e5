"""A stand-in for `python -m dalivssl STEP …` in study tests (no torch): it writes what the
commands write that studies read: record.json (data and lineage by content, as
record.new_record does), a checkpoint with fresh bytes (a remade run differs), summary.json and
for a finetune finetune.h5."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from dalivssl.data.manifest import load_manifest
    from dalivssl.record import new_record, write_run_record

    step = argv[argv.index("dalivssl") + 1]

    def values(flag):
        return [argv[i + 1] for i, a in enumerate(argv) if a == flag]

    out = Path(values("--out")[0])
    out.mkdir(parents=True, exist_ok=True)
    data = (values("--data") or values("--train"))[0]
    parents = values("--checkpoint")
    rec = new_record(step, out.name, data_path=data, manifest=load_manifest(data),
                     parents=parents, status="complete")
    (out / "checkpoint.pt").write_bytes(os.urandom(64))
    (out / "summary.json").write_text(json.dumps({"final_loss": len(parents) + 1.0}))
    if step == "finetune":
        from dalivssl.results import ResultsFile

        with ResultsFile(out / "finetune.h5", "w") as f:
            for key in ("clip_acc", "video_acc"):
                f.write("finetune", key, 0.25 * len(values("--max-steps")))
    with open(out.parent.parent / "calls.txt", "a") as f:
        f.write(f"{step} {out.name}\n")
    write_run_record(out, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
