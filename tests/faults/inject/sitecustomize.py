"""Test-only fault injection for subprocesses: put this folder on PYTHONPATH and set SPEEDRUN_FAULT.

Python imports ``sitecustomize`` at start-up, so every process of a run (``speedrun run``, its
``speedrun eval`` children) gets the fault without any hook in the harness itself. Without
SPEEDRUN_FAULT this file does nothing.

SPEEDRUN_FAULT is one ``kind:step`` (step = the checkpoint or training step it applies to):

* ``kill-step:N``       SIGKILL inside training step N (after backward, before the optimizer step)
* ``kill-ckpt:N``       SIGKILL while checkpoint N is being written (model.safetensors half written)
* ``kill-latest:N``     SIGKILL after checkpoint N is renamed into place, before ``latest`` moves
* ``kill-eval:N``       SIGKILL the ``speedrun eval`` process of checkpoint N while it samples
* ``kill-results:N``    SIGKILL while the results file is written (half of it on disk), N unused
* ``sigterm-step:N``    send this process SIGTERM inside training step N (graceful stop expected)
* ``ctrl-c-step:N``     rank 0 sends SIGINT to its launcher's process group (``speedrun run`` and torchrun,
                        not the workers) inside training step N: a terminal's Ctrl-C
"""

from __future__ import annotations

import os
import signal

FAULT = os.environ.get("SPEEDRUN_FAULT", "")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(kind: str, n: int) -> None:
    from pathlib import Path

    if kind in ("kill-step", "sigterm-step", "ctrl-c-step"):
        from speedrun import train

        in_warmup = [False]
        warmup = train.Trainer._untimed_warmup
        step_fn = train.Trainer._step

        def untimed_warmup(self, *args, **kwargs):
            in_warmup[0] = True
            try:
                return warmup(self, *args, **kwargs)
            finally:
                in_warmup[0] = False

        def step(self, index, *args, **kwargs):
            out = step_fn(self, index, *args, **kwargs)
            if index == n and not in_warmup[0]:
                if kind == "kill-step":
                    _die()
                elif kind == "sigterm-step":
                    os.kill(os.getpid(), signal.SIGTERM)
                elif os.environ.get("RANK") == "0":  # torchrun's workers run in sessions of their own
                    os.killpg(os.getpgid(os.getppid()), signal.SIGINT)
            return out

        train.Trainer._untimed_warmup = untimed_warmup
        train.Trainer._step = step
    elif kind == "kill-ckpt":
        from speedrun import checkpoint

        save_file = checkpoint.save_file

        def half_written(tensors, filename, *args, **kwargs):
            save_file(tensors, filename, *args, **kwargs)
            if Path(filename).parent.name.startswith(f".step-{n:08d}.tmp-"):
                size = os.path.getsize(filename)
                os.truncate(filename, size // 2)
                _die()

        checkpoint.save_file = half_written
    elif kind == "kill-latest":
        from speedrun import checkpoint

        write_text = checkpoint.atomic_write_text

        def before_latest(path, text, **kwargs):
            if Path(path).name == "latest" and text.strip() == f"step-{n:08d}":
                _die()
            return write_text(path, text, **kwargs)

        checkpoint.atomic_write_text = before_latest
    elif kind == "kill-eval":
        from speedrun.eval import run as eval_run

        generate_all = eval_run.generate_all

        def generate_then_die(sampler, count, batch_size):
            images = generate_all(sampler, count // 2, batch_size)
            _die()
            return images

        evaluate = eval_run.evaluate_checkpoint

        def evaluate_checkpoint(checkpoint, *args, **kwargs):
            if Path(checkpoint).name == f"step-{n:08d}":
                eval_run.generate_all = generate_then_die
            return evaluate(checkpoint, *args, **kwargs)

        eval_run.evaluate_checkpoint = evaluate_checkpoint
    elif kind == "kill-results":
        from speedrun import fileio

        write_durably = fileio.write_durably

        def half_then_die(path, write):
            if ".json.tmp-" in Path(path).name and Path(path).parent.parent.name == "results":
                import io

                buffer = io.BytesIO()
                write(buffer)
                data = buffer.getvalue()
                with open(path, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                _die()
            return write_durably(path, write)

        fileio.write_durably = half_then_die
    else:
        raise SystemExit(f"sitecustomize: unknown SPEEDRUN_FAULT kind {kind!r}")


if FAULT:
    _kind, _, _n = FAULT.partition(":")
    _install(_kind, int(_n or 0))
