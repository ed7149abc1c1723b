"""Up-sampling quality at an equal number of steps: for each trained work dir, the brain L1
(MAE) of the EMA generator on the first validation subject, a checkerboard index, and one
T2-FLAIR slice per run side by side in a PNG.

  PYTHONPATH=. python benchmarks/upsample_quality.py --out=up.png runs/up_transposed runs/up_nearest

Checkerboard index: the power of the prediction at the three period-2 frequencies of the
2D FFT ((H/2, 0), (0, W/2), (H/2, W/2)) over the same power of the target, mean over slices
and contrasts; 1 means no more period-2 pattern than the truth, a transposed-convolution
checkerboard shows as > 1.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def period2_power(images: np.ndarray) -> np.ndarray:
    """[N, H, W, C] (H, W even) -> [N, C] power at the period-2 frequencies."""
    spectrum = np.abs(np.fft.fft2(images, axes=(1, 2))) ** 2
    height, width = images.shape[1:3]
    return (spectrum[:, height // 2, 0] + spectrum[:, 0, width // 2]
            + spectrum[:, height // 2, width // 2])


def evaluate(workdir: str, split: str):
    from data_pipelines import input_pipeline  # noqa: PLC0415
    from experiments import job  # noqa: PLC0415
    from qsnet_jax import inference  # noqa: PLC0415
    from qsnet_jax.train import checkpoints  # noqa: PLC0415

    config, module, variables = checkpoints.load_generator(workdir, use_ema=True)
    cohort_dir = job.get_cohort(config)
    view = input_pipeline.open_split(cohort_dir, split, config.data)
    subject = view.subjects[0]["subject"]
    predict = inference.make_predict_fn(module, variables)
    batches = []
    for batch in input_pipeline.make_eval_iterator(cohort_dir, split, config.data,
                                                   batch_size=16, process_index=0,
                                                   process_count=1, subjects=[subject]):
        batch = dict(batch)
        batch["prediction"] = np.asarray(predict(batch["inputs"]))
        batches.append(batch)
    volume = input_pipeline.assemble_volumes(batches)[subject]
    prediction, target = volume["prediction"], volume["targets"]
    brain = volume["brain_mask"][..., 0] > 0
    mae = float(np.mean(np.abs(prediction - target)[brain]))
    keep = brain.reshape(brain.shape[0], -1).mean(1) > 0.05
    ratio = period2_power(prediction[keep]).sum(0) / period2_power(target[keep]).sum(0)
    return {"workdir": workdir, "brain_mae": round(mae, 5),
            "checkerboard_index": round(float(np.mean(ratio)), 3),
            "checkerboard_index_per_contrast": [round(float(r), 3) for r in ratio]}, \
        (prediction, target, brain)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--split", default="healthy_test")
    parser.add_argument("--out", default="")
    parser.add_argument("--channel", type=int, default=3, help="3 = T2-FLAIR")
    args = parser.parse_args()
    results, panels = [], []
    for workdir in args.workdirs:
        result, (prediction, target, _) = evaluate(workdir, args.split)
        results.append(result)
        middle = prediction.shape[0] // 2
        panels.append((workdir, prediction[middle, ..., args.channel]))
    print(json.dumps(results, indent=2))
    if args.out:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        from qsnet_jax import io  # noqa: PLC0415

        panels.append(("target", target[middle, ..., args.channel]))
        figure, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
        for axis, (title, image) in zip(axes, panels, strict=True):
            axis.imshow(np.rot90(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axis.set_title(title.rstrip("/").split("/")[-1], fontsize=8)
            axis.axis("off")
        with io.staged_file(args.out) as tmp:
            figure.savefig(tmp, dpi=150, bbox_inches="tight", format="png")


if __name__ == "__main__":
    main()
