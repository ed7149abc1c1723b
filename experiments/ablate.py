"""Run the named ablation variants of QS-Net and write one table with paired Wilcoxon tests
against the full model (workflow.studies; the same command as experiments.compare).

  python -m experiments.ablate --config=configs/ablations.py:quick   # runs/ablations_quick
  python -m experiments.ablate --config=configs/ablations.py:tiny --workdir=/tmp/ablations_tiny
"""

from absl import app

from experiments import cli
from experiments.compare import main

if __name__ == "__main__":
    app.run(main, flags_parser=cli.config_flags_parser)
