"""The robustness command as a :class:`~dalivssl.runs.base.RunSpec`: clean and noisy video accuracy
of finetuned checkpoints and R_s = (A_c − A_p)/A_c per noise × severity (Kumar et al., arXiv
2306.06010; Schiappa et al., arXiv 2207.01398). The cell loop is :mod:`dalivssl.engine.robustness`.

Outputs in the run dir: ``robustness.h5`` (the cells, layout in engine.robustness; a rerun into
the same dir resumes the cells of the same checkpoints, data and settings, anything else is
refused), ``robustness.csv``, ``robustness.png``, ``record.json`` and ``config.yaml``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from dalivssl.config import RobustnessConfig, save_yaml
from dalivssl.errors import DalivsslError
from dalivssl.runs.base import RunSpec, execute

__all__ = ["SPEC", "robustness", "write_csv"]

ARTIFACT = "robustness.h5"
OUTPUTS = (ARTIFACT, "robustness.csv", "robustness.png", "record.json", "config.yaml")


def robustness(cfg: RobustnessConfig, overwrite: bool = False) -> dict:
    """Sweep ``cfg``'s checkpoints; a rerun into ``cfg.out`` resumes its stored cells
    (``overwrite``: start again). Returns {'summaries', 'record'}."""
    cfg, inputs = prepare(cfg)
    return execute(SPEC, cfg, cfg.out, resume=not overwrite, overwrite=overwrite, **inputs)


def prepare(cfg: RobustnessConfig):
    """The inputs, checked and loaded before the run dir is touched: the test manifest (the
    embedded dataset's when none; labelled) and the classifiers (on the CPU), each fed as its
    record says (``record.resolve_clip``). Returns (cfg resolved, inputs)."""
    import torch

    from dalivssl.data.synth import resolve_manifest

    cfg = cfg.check()
    for p in cfg.checkpoints:
        if not Path(p).is_file():
            raise DalivsslError(f"{p}: checkpoint not found")
    torch.set_num_threads(cfg.threads)
    data, manifest = resolve_manifest(cfg.data, "test")
    models = load_models(cfg.checkpoints)
    labels = [r.label for r in manifest.records]
    if any(lb < 0 for lb in labels):
        raise DalivsslError(f"{data}: robustness needs labelled test videos")
    for m in models:
        if labels and max(labels) >= m.num_classes:
            raise DalivsslError(f"{m.source}: classifier has {m.num_classes} classes, but "
                                f"{data} uses label {max(labels)}")
    return dataclasses.replace(cfg, data=str(data)), dict(models=models, manifest=manifest)


def load_models(paths, device: str = "cpu") -> list:
    """Finetuned checkpoints (contract C7) → ``engine.robustness.SweepModel``\\ s with unique
    names, each with the clip settings of its record (``record.resolve_clip``)."""
    from dalivssl.engine.finetune import load_classifier
    from dalivssl.engine.robustness import SweepModel
    from dalivssl.record import file_hash, record_of, resolve_clip

    out, names = [], set()
    for p in paths:
        p = Path(p)
        model, ckpt = load_classifier(p, device=device)
        record = record_of(ckpt, p)
        name = record.name if record.name not in names else f"{record.name}_{p.parent.name}"
        k = 2
        while name in names:
            name, k = f"{record.name}_{k}", k + 1
        names.add(name)
        c = resolve_clip(record)
        out.append(SweepModel(name, model, c.normalize, c.clip_len, c.size,
                              int(ckpt["num_classes"]), str(p.resolve()), file_hash(p), record))
    return out


def _run(cfg: RobustnessConfig, ctx, models, manifest) -> dict:
    from dalivssl import record as rec
    from dalivssl.console import progress as progress_bar
    from dalivssl.console import stderr_console
    from dalivssl.devices import dali_threads
    from dalivssl.engine import robustness as rb
    from dalivssl.results import ResultsFile

    dev, out_dir, console = ctx.device, ctx.run_dir, stderr_console()
    console.print(f"device: {dev.reason}", highlight=False)
    cfg = dataclasses.replace(cfg, device=dev.name)
    for m in models:
        m.model.to(dev.torch)
    settings = rb.SweepSettings(
        cfg.noises, cfg.severities, cfg.constants, cfg.rounding, cfg.clips_per_video, cfg.seed,
        cfg.decoder, rec.manifest_hash(manifest), dev.name, cfg.noise_at,
        rb.decoded_side(manifest) if cfg.noise_at == "decoded" else 0,
        cfg.videos_per_cell).check()
    threads = dali_threads(dev, cfg.dali_threads)

    def make_source(clip_len, size):
        if cfg.decoder == "pyav":
            return rb.PyAVSource(manifest, cfg.clips_per_video, clip_len, size, cfg.batch_size)
        return rb.dali_source(manifest, cfg.clips_per_video, clip_len, size, cfg.batch_size,
                              device=dev.name, seed=cfg.seed, num_threads=threads)

    out_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar(console, disable=not cfg.progress) as bar:

        def progress(total, desc):
            task = bar.add_task(desc, total=total)
            return lambda n: bar.advance(task, n)

        with ResultsFile(out_dir / ARTIFACT) as res:
            summaries = rb.run_sweep(models, make_source, res, settings, device=dev.name,
                                     forward_clips=cfg.forward_clips, progress=progress)
            record = rec.new_record(
                "robustness", "+".join(m.name for m in models), data_path=cfg.data,
                manifest=manifest, device=dev.name, decoder=cfg.decoder,
                parents=[m.source for m in models], arch=models[0].record.arch,
                clip=rec.resolve_clip(models[0].record), seed=cfg.seed,
                settings={**settings.key(), "noises": list(cfg.noises),
                          "severities": list(cfg.severities), "videos": len(manifest)},
                status="complete")
            res.set_meta(command="robustness", data=str(cfg.data), settings=settings.key(),
                         record=record.to_dict())
    if ctx.dist.is_main:
        from dalivssl.console import stdout_console
        from dalivssl.plots import plot_rs

        csv_path = write_csv(summaries, out_dir / "robustness.csv")
        png_path = plot_rs(summaries, out_dir / "robustness.png",
                           title=f"robustness · {Path(cfg.data).name} · {len(manifest)} videos "
                                 f"· {cfg.clips_per_video} clips/video · {cfg.constants}")
        save_yaml(cfg, out_dir / "config.yaml")  # replay: dalivssl robustness --config …
        rec.write_run_record(out_dir, record)
        stdout_console().print(rich_table(summaries))
        console.print(f"wrote {out_dir / ARTIFACT}, {csv_path.name}, {png_path.name}")
    return {"summaries": summaries, "record": record}


def write_csv(summaries, path) -> Path:
    """One row per (model, noise, severity) plus the clean row (severity 0)."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "noise", "severity", "accuracy", "clean_accuracy", "rs"])
        for s in summaries:
            w.writerow([s["model"], "clean", 0, f"{s['clean_acc']:.6f}", f"{s['clean_acc']:.6f}",
                        f"{0.0:.6f}"])
            for i, n in enumerate(s["noises"]):
                for j, sev in enumerate(s["severities"]):
                    w.writerow([s["model"], n, sev, f"{s['accuracy'][i, j]:.6f}",
                                f"{s['clean_acc']:.6f}", f"{s['rs'][i, j]:.6f}"])
    return path


def rich_table(summaries):
    """R_s per model × noise (columns: severities, mean) plus the clean accuracy."""
    from rich.table import Table

    sevs = summaries[0]["severities"]
    t = Table(title="Noise robustness R_s = (A_c − A_p)/A_c (lower is better)")
    for col in ["model", "A_c", "noise"] + [f"s{s}" for s in sevs] + ["mean"]:
        t.add_column(col, justify="left" if col in ("model", "noise") else "right")
    for s in summaries:
        for i, n in enumerate(s["noises"]):
            t.add_row(s["model"] if i == 0 else "", f"{s['clean_acc']:.3f}" if i == 0 else "", n,
                      *[f"{v:.3f}" for v in s["rs"][i]], f"{s['rs_by_noise'][i]:.3f}")
        t.add_row("", "", "[b]mean[/b]", *[f"{v:.3f}" for v in s["rs_by_severity"]],
                  f"[b]{s['mean_rs']:.3f}[/b]", end_section=True)
    return t


def _metrics(run_dir) -> list[dict]:
    """What the study reads: A_c; A_p and R_s per noise × severity and their means (noise
    'mean'), per model in robustness.h5."""
    from dalivssl.results import ResultsFile

    rows = []
    with ResultsFile(Path(run_dir) / ARTIFACT, "r") as f:
        for model in f.names("robustness"):
            def get(name):
                return f.read("robustness", f"{model}/{name}")

            noises, sevs = list(get("noises")), [int(s) for s in get("severities")]
            acc, rs = get("accuracy"), get("rs")
            rows += [{"metric": "A_c", "value": float(get("clean_acc"))},
                     {"metric": "A_p", "noise": "mean", "value": float(get("mean_acc"))},
                     {"metric": "R_s", "noise": "mean", "value": float(get("mean_rs"))}]
            for j, s in enumerate(sevs):
                rows.append({"metric": "R_s", "noise": "mean", "severity": s,
                             "value": float(sum(rs[i][j] for i in range(len(noises)))
                                            / len(noises))})
                for i, n in enumerate(noises):
                    rows += [{"metric": "A_p", "noise": n, "severity": s,
                              "value": float(acc[i][j])},
                             {"metric": "R_s", "noise": n, "severity": s,
                              "value": float(rs[i][j])}]
    return rows


SPEC = RunSpec(name="robustness", config=RobustnessConfig, artifact=ARTIFACT, resume_keys=(),
               outputs=OUTPUTS, run=_run, metrics=_metrics, resume_flag=False)
