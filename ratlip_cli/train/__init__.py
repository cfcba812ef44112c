"""`ratlip train`: the loop, checkpoints, EMA and the run directory.

    from ratlip_cli.train import train, resume_config
    result = train(cfg)                              # a new run under train.runs_dir
    result = train(resume_config("runs/x"), resume="runs/x")   # continue it exactly
"""

from ratlip_cli.train.loop import ResumePoint, TrainResult, Trainer, architecture_changes, resume_config, resume_point, train

__all__ = ["ResumePoint", "TrainResult", "Trainer", "architecture_changes", "resume_config", "resume_point", "train"]
