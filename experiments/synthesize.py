"""Synthesize weighted contrasts from quantitative maps with a trained generator
(workflow.synthesize).

One subject (one NIfTI per synthesized contrast, e.g. OUT/t1w.nii.gz, on the grid, affine
and header of the t1map file, in that file's orientation):

  python -m experiments.synthesize --workdir runs/default \
      --t1map T1.nii.gz --t2map T2.nii.gz --pdmap PD.nii.gz [--mask MASK.nii.gz] --out OUT

A whole cohort (OUT/<subject>/<contrast>.nii.gz for every manifest row):

  python -m experiments.synthesize --checkpoint runs/default/finetune \
      --manifest COHORT/manifest.csv --out OUT

Missing parents of OUT are created; a failure leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from experiments import cli
from qsnet_jax.physics.channels import INPUT_CHANNELS
from workflow import rescale, synthesize, uncertainty


def build_parser():
    parser = cli.OneLineArgumentParser(prog="python -m experiments.synthesize",
                                       description="Synthesize weighted MRI contrasts from "
                                       "quantitative maps.")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--workdir", help="a training work dir (its last stage's best model)")
    model.add_argument("--checkpoint", help="a stage dir or a checkpoint step dir")
    for name in INPUT_CHANNELS:
        parser.add_argument(f"--{name}", default="", metavar="PATH",
                            help=f"{name} NIfTI (the model's inputs: see its config)")
    parser.add_argument("--mask", default="", metavar="PATH",
                        help="brain mask NIfTI (default: computed from the maps)")
    parser.add_argument("--manifest", default="", metavar="CSV",
                        help="a cohort manifest.csv: synthesize every subject into OUT/<subject>")
    parser.add_argument("--subjects", default="", help="comma-separated subset of --manifest")
    parser.add_argument("--out", required=True, help="output folder (parents are created)")
    parser.add_argument("--convert-seconds", action="store_true",
                        help="T1/T2 maps are in seconds: multiply by 1000")
    parser.add_argument("--resample", action="store_true",
                        help="resample inputs on another grid onto the first input's grid")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="slices per model call (default: the config's eval.batch_size)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA weights")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser


def main(argv: Sequence[str] | None = None, *,
         model_loader: Callable = synthesize.load_model):
    args = build_parser().parse_args(argv)
    written = cli.run(
        synthesize.synthesize_command, args.workdir or args.checkpoint,
        {name: getattr(args, name) for name in INPUT_CHANNELS}, args.out, mask_path=args.mask,
        manifest=args.manifest, subjects=[s for s in args.subjects.split(",") if s],
        convert_seconds=args.convert_seconds, resample=args.resample,
        batch_size=args.batch_size, use_ema=not args.no_ema, overwrite=args.overwrite,
        model_loader=model_loader, uncertainty_loader=uncertainty.stage_uncertainty,
        rescale_loader=rescale.stage_rescale)
    count = sum(len(v) if isinstance(v, dict) else 1 for v in written.values())
    print(f"wrote {count} file(s) into {os.path.abspath(args.out)}", flush=True)
    return written


if __name__ == "__main__":
    main()
