"""How often the input gate's out-of-distribution score refuses images, for the packaged demo model.

    .venv/bin/python benchmarks/ood_gate.py        # -> benchmarks/results/ood_gate.{md,json}

The model is exported as `hamedge export` does (statistics from 128 synthetic radiographs of seed
90001, threshold for 1% false refusals on 200 of seed 90002). Then, each image scored with the
bundle's own hamedge.ood model on the fp32 graph:
- held-out in-distribution: 400 synthetic radiographs of seed 7 (the demo's; never seen before);
- not chest radiographs: every distinct image of pydicom's test corpus (CT, MR, US, NM, RT dose,
  segmentation, secondary captures, a photo of a face, a radiograph of a limb) as the pixels
  hamedge.io reads, a few photos shipped with matplotlib, blank and noise images;
- real chest radiographs: the three NIH samples in ../shared/data and the CR chest of pydicom-data.
For comparison, the same Mahalanobis rule on the mean-pooled classification features (512 values
from the torch model), which the bundle's graphs do not output.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from _common import RESULTS, ROOT, record_line, run_record

CORPUS = {  # one file per distinct image (other files of the corpus re-encode these)
    "CT": ["CT_small.dcm", "693_UNCR.dcm", "eCT_Supplemental.dcm", "J2K_pixelrep_mismatch.dcm",
           "explicit_VR-UN.dcm"],
    "MR": ["MR_small.dcm", "MR2_UNCR.dcm", "emri_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
           "examples_overlay.dcm"],
    "US": ["US1_UNCR.dcm", "OBXXXX1A.dcm", "examples_rgb_color.dcm", "examples_palette.dcm",
           "examples_ybr_color.dcm", "gdcm-US-ALOKA-16.dcm"],
    "other DICOM (NM, RT dose, SEG, secondary capture)": [
        "JPEG2000_UNC.dcm", "image_dfl.dcm", "mlut_18.dcm", "rtdose_1frame.dcm",
        "liver_1frame.dcm", "SC_rgb.dcm"],
    "photo of a face (DICOM secondary capture)": ["OT-PAL-8-face.dcm"],
    "radiograph of a limb (CR, EXTREMITY)": ["RG3_UNCR.dcm"],
}
PHOTOS = ["grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"]


def corpus_images() -> dict[str, dict[str, np.ndarray]]:
    from pydicom.data import get_testdata_file

    from hamedge.io import read_image

    groups: dict[str, dict[str, np.ndarray]] = {}
    for group, names in CORPUS.items():
        for name in names:
            path = get_testdata_file(name, download=False)
            if path is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                groups.setdefault(group, {})[name] = read_image(path)
    try:
        import matplotlib.cbook as cbook

        groups["photos (matplotlib sample data)"] = {
            n: read_image(cbook.get_sample_data(n, asfileobj=False)) for n in PHOTOS}
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    groups["blank and noise"] = {"black": np.zeros((512, 512), np.uint8),
                                 "white": np.full((512, 512), 255, np.uint8),
                                 "gray": np.full((512, 512), 128, np.uint8),
                                 "noise": rng.integers(0, 256, (512, 512), dtype=np.uint8)}
    return groups


def real_chest() -> dict[str, np.ndarray]:
    from pydicom.data import get_testdata_file

    from hamedge.io import read_image

    images = {p.name: read_image(p) for p in
              sorted((ROOT.parent / "shared" / "data" / "nih-samples" / "images").glob("*.png"))}
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is not None:
        images["RG1_UNCR.dcm (CR chest PA)"] = read_image(path)
    return images


def main() -> None:
    import torch
    from sklearn.covariance import LedoitWolf

    import hamedge
    from hamedge import synth
    from hamedge.export import ExportOptions, export_bundle
    from hamedge.model.checkpoint import load_model
    from hamedge.api import DEFAULT_CHECKPOINT
    from hamedge.preprocess import preprocess

    record = run_record(script="benchmarks/ood_gate.py")
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = Path(tmp) / "demo.hamedge"
        export_bundle(None, ExportOptions(out=bundle_dir), log=lambda *_: None)
        model = hamedge.load(bundle_dir, backend="onnxruntime")
        gate = model.ood
        spec = model.spec
        torch_model = load_model(DEFAULT_CHECKPOINT).eval()

        def inputs(images, channels):
            return np.stack([preprocess(im, spec, channels) for im in images])

        def distances(images):
            out = []
            for i in range(0, len(images), 32):
                out.append(gate.distances(model.backend.run(inputs(images[i:i + 32], 1)).attention_maps))
            return np.concatenate(out)

        def pooled(images):
            out = []
            with torch.no_grad():
                for i in range(0, len(images), 32):
                    batch = torch.from_numpy(inputs(images[i:i + 32], spec.in_channels))
                    out.append(torch_model.features(batch).mean(dim=(2, 3)).numpy())
            return np.concatenate(out).astype(np.float64)

        size = int(spec.extra.get("synth_size", max(spec.input_size, 256)))
        render = lambda seed, n: [synth.render(i, seed, size)[0] for i in range(n)]  # noqa: E731
        fit_imgs, held_imgs, test_imgs = render(90001, 128), render(90002, 200), render(7, 400)
        estimator = LedoitWolf().fit(pooled(fit_imgs))
        pooled_threshold = float(np.quantile(np.sqrt(estimator.mahalanobis(pooled(held_imgs))),
                                             0.99, method="higher"))

        def pooled_distances(images):
            return np.sqrt(estimator.mahalanobis(pooled(images)))

        rows = []

        def measure(group, names, images):
            d, p = distances(images), pooled_distances(images)
            rows.append({"group": group, "images": len(images),
                         "refused": int(np.sum(d > gate.threshold)),
                         "refused_pooled_features": int(np.sum(p > pooled_threshold)),
                         "per_image": {n: {"distance": round(float(a), 2),
                                           "pooled_distance": round(float(b), 2)}
                                       for n, a, b in zip(names, d, p)} if len(names) < 50 else {}})

        measure("held-out in-distribution (synthetic, seed 7)", [f"synth {i}" for i in range(400)],
                test_imgs)
        for group, images in corpus_images().items():
            measure(group, list(images), list(images.values()))
        chest = real_chest()
        measure("real chest radiographs (NIH samples, CR chest of pydicom-data)", list(chest),
                list(chest.values()))
        model.close()

    result = {"record": record, "threshold": gate.threshold, "ood": gate.describe(),
              "pooled_features_threshold": pooled_threshold, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ood_gate.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Input gate: out-of-distribution refusals, demo model", "",
             f"Measured {record_line(record)}", "",
             f"Bundle's rule ({gate.describe()['features']}, Ledoit-Wolf Mahalanobis): threshold "
             f"{gate.threshold:.2f}, fit on {gate.info['fit_images']} synthetic images, set on "
             f"{gate.info['heldout_images']} held-out ones for a "
             f"{gate.info['target_false_refusals']:.0%} false-refusal target. Comparison: the same "
             f"rule on mean-pooled classification features (512 values, torch), threshold "
             f"{pooled_threshold:.2f}.", "",
             "| images | count | refused (bundle's rule) | refused (pooled features) |",
             "| --- | ---: | ---: | ---: |"]
    for row in rows:
        n = row["images"]
        lines.append(f"| {row['group']} | {n} | {row['refused']} ({row['refused'] / n:.0%}) | "
                     f"{row['refused_pooled_features']} ({row['refused_pooled_features'] / n:.0%}) |")
    lines += ["", "Accepted images that are not chest radiographs (distance / threshold):", ""]
    for row in rows[1:-1]:
        for name, d in row["per_image"].items():
            if d["distance"] <= gate.threshold:
                lines.append(f"- {row['group']}: {name} ({d['distance']} / {gate.threshold:.1f})")
    lines += ["", "Real chest radiographs (distance; refused above the threshold):", ""]
    for name, d in rows[-1]["per_image"].items():
        lines.append(f"- {name}: {d['distance']} (pooled features {d['pooled_distance']})")
    (RESULTS / "ood_gate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
