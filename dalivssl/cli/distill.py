"""`dalivssl distill` (multi-teacher knowledge distillation) and `dalivssl export-logits`.

distill writes ``<out>/student.pt`` (a finetune checkpoint, contract C7), ``<out>/distill.h5``
(groups ``distill``: per-step loss/ce/kd/kd_teachers; ``eval``: accuracy) and
``<out>/losses.csv``. export-logits writes the HDF5 logits file that ``--teacher-logits`` reads
(layout in dalivssl.analysis.distill). Torch and DALI load only when a command runs.
"""
from __future__ import annotations

from pathlib import Path

import click

from dalivssl.errors import DalivsslError


@click.command("distill")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(dir_okay=False),
              help="Finetuned teacher checkpoint (repeatable).")
@click.option("--teacher-logits", "teacher_logits", multiple=True,
              type=click.Path(dir_okay=False),
              help="Precomputed teacher logits (HDF5 from export-logits; repeatable).")
@click.option("--student", "arch", required=True, help="Student architecture (a BACKBONES key).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Training manifest. Default: the embedded synthetic train split.")
@click.option("--eval-data", type=click.Path(dir_okay=False), default=None,
              help="Manifest for the final accuracy. Default: the synthetic test split without "
                   "--data, else the training manifest.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps.")
@click.option("--temperature", type=float, default=4.0, show_default=True)
@click.option("--alpha", type=float, default=1.0, show_default=True,
              help="Weight of the summed KD terms: L = CE + alpha * sum_i T^2 KL_i.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--clip-len", type=int, default=None,
              help="Student clip length (default: the first teacher's, else 16).")
@click.option("--size", type=int, default=None,
              help="Student crop size (default: the first teacher's, else 112).")
@click.option("--normalize", type=click.Choice(["imagenet", "unit"]), default=None,
              help="Student input normalisation (default: the first teacher's, else imagenet).")
@click.option("--eval-clips", type=int, default=1, show_default=True,
              help="Clips per video for the final accuracy.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/distill",
              show_default=True)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def distill(teachers, teacher_logits, arch, data, eval_data, epochs, max_steps, temperature,
            alpha, lr, batch_size, clip_len, size, normalize, eval_clips, out, device, seed):
    """Distil finetuned teachers (and/or precomputed logits) into a student:
    L = CE(s, y) + alpha * sum_i T^2 KL(softmax(t_i/T) || softmax(s/T)) (Hinton et al. 2015;
    multi-teacher as in Kumar et al. 2023). With no teacher this is plain supervised training."""
    import torch
    from rich.progress import Progress

    from dalivssl.analysis import distill as D
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.data.manifest import load_manifest
    from dalivssl.engine.checkpoint import save_checkpoint
    from dalivssl.results import ResultsFile
    from dalivssl.analysis.features import eval_loader, make_loader, torch_device
    from models import create_backbone

    torch.manual_seed(seed)
    tdev = torch.device(torch_device(device))
    data_path, manifest = resolve_manifest(data, "train")
    if eval_data is not None:
        eval_path, eval_manifest = Path(eval_data), load_manifest(eval_data)
    elif data is None:
        eval_path, eval_manifest = resolve_manifest(None, "test")
    else:
        eval_path, eval_manifest = data_path, manifest
    classes = D.manifest_classes(manifest)
    t_models = [D.load_model_teacher(p, classes, tdev) for p in teachers]
    t_files = [D.load_logits_teacher(p, manifest, classes, tdev) for p in teacher_logits]
    first = t_models[0] if t_models else None
    clip_len = clip_len or (first.clip_len if first else 16)
    size = size or (first.size if first else 112)
    normalize = normalize or (first.normalize if first else "imagenet")

    student = create_backbone(arch, num_classes=len(classes)).to(tdev)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    loader = make_loader("eval", manifest, str(data_path), batch_size=batch_size, device=device,
                         clip_len=clip_len, size=size, seed=seed, augment=True, drop_last=True,
                         raw=True, num_clips=1, random=True, flip=manifest.flip_safe)
    total = len(loader) * epochs if max_steps is None else min(max_steps, len(loader) * epochs)
    with Progress(transient=True) as prog:
        bar = prog.add_task("distill", total=total)
        hist = D.train_student(
            student, [*t_models, *t_files], loader, opt, normalize, tdev, epochs=epochs,
            max_steps=max_steps, temperature=temperature, alpha=alpha,
            progress=lambda s, parts: prog.update(bar, completed=s,
                                                  description=f"distill ce={parts['ce']:.3f}"))
    if not hist.step:
        raise DalivsslError(f"{data_path}: no training step ran (no batch of {batch_size})")
    test_loader = eval_loader(eval_manifest, eval_clips, batch_size, clip_len, size,
                              device=device, seed=seed, raw=True, where=str(eval_path))
    acc, n_eval = D.accuracy(student, test_loader, normalize, tdev)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [str(Path(p).resolve()) for p in (*teachers, *teacher_logits)]
    config = dict(command="distill", student=arch, teachers=list(map(str, teachers)),
                  teacher_logits=list(map(str, teacher_logits)), data=str(data_path),
                  eval_data=str(eval_path), epochs=epochs, max_steps=max_steps,
                  temperature=temperature, alpha=alpha, lr=lr, batch_size=batch_size,
                  clip_len=clip_len, size=size, normalize=normalize, seed=seed, device=device)
    save_checkpoint(out / "student.pt", **D.student_checkpoint_fields(
        student, arch, classes, clip_len, size, normalize, config, hist.step[-1],
        hist.epoch[-1] + 1))
    n_t = len(names)
    kd_i = (torch.tensor(hist.kd_i, dtype=torch.float64).numpy() if n_t else
            torch.zeros((len(hist.step), 0), dtype=torch.float64).numpy())
    with ResultsFile(out / "distill.h5", "w") as rf:
        rf.set_meta(command="distill", config=config)
        rf.write("distill", "step", hist.step)
        rf.write("distill", "epoch", hist.epoch)
        rf.write("distill", "loss", hist.loss, formula="ce + alpha * sum_i T^2 KL_i")
        rf.write("distill", "ce", hist.ce)
        rf.write("distill", "kd", hist.kd)
        rf.write("distill", "kd_teachers", kd_i)
        if names:
            rf.write("distill", "teachers", names)
        rf.write("eval", "accuracy", acc, videos=n_eval, clips=eval_clips, data=str(eval_path))
    with open(out / "losses.csv", "w") as f:
        f.write("step,epoch,loss,ce,kd" + "".join(f",kd_{i}" for i in range(n_t)) + "\n")
        for j, s in enumerate(hist.step):
            f.write(f"{s},{hist.epoch[j]},{hist.loss[j]:.6f},{hist.ce[j]:.6f},{hist.kd[j]:.6f}"
                    + "".join(f",{v:.6f}" for v in hist.kd_i[j]) + "\n")
    click.echo(f"student {arch}: {hist.step[-1]} steps, loss {hist.loss[0]:.4f} -> "
               f"{hist.loss[-1]:.4f}, accuracy {acc:.3f} on {n_eval} videos -> {out}")


@click.command("export-logits")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Finetuned checkpoint.")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Manifest. Default: the embedded synthetic train split.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write.")
@click.option("--clips", type=int, default=10, show_default=True,
              help="Evenly spaced clips per video; logits are averaged over them.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
def export_logits(checkpoint, data, output, clips, batch_size, device):
    """Write a checkpoint's video-level logits (mean over --clips eval clips) for every video of
    a manifest, keyed by video path, for `dalivssl distill --teacher-logits`."""
    from dalivssl.analysis import distill as D
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.analysis.features import eval_loader, torch_device
    from dalivssl.engine.checkpoint import load_classifier

    tdev = torch_device(device)
    data_path, manifest = resolve_manifest(data, "train")
    model, ck = load_classifier(checkpoint, device=tdev)
    clip_len, size = int(ck.get("clip_len") or 16), int(ck.get("size") or 112)
    normalize = ck.get("normalize") or "imagenet"
    loader = eval_loader(manifest, clips, batch_size, clip_len, size, device=device, raw=True,
                         where=str(data_path))
    # manifest order, one row per video (a loader may substitute a repeat for a bad video)
    logits, idx = D.video_logits(model, loader, normalize, tdev)
    D.write_logits_file(output, logits, [manifest.records[i].path for i in idx], idx,
                        classes=list(ck.get("classes") or []), num_clips=clips,
                        clip_len=clip_len, size=size, normalize=normalize, arch=ck["arch"],
                        checkpoint=str(Path(checkpoint).resolve()), data=str(data_path))
    skipped = getattr(loader, "skipped", {})
    click.echo(f"logits {logits.shape[0]}x{logits.shape[1]} ({clips} clips/video) -> {output}"
               + (f"; skipped {skipped}" if skipped else ""))
