"""Predicts images with a model `load_checkpoint.py --onnx` exported, in onnxruntime: no PyTorch.

    python deploy/onnx_predict.py model.onnx image.jpeg [image.jpeg ...]

Preprocesses each image as trainq did (`preprocess.py`, from the spec the model carries in its
metadata), runs the images of each size as one batch, and prints what `load_checkpoint.py` prints:
one line per image, `<path>\t<probability of each class>`.
"""
import json
import sys

import numpy as np

from preprocess import network_input

try:
    import onnxruntime
except ImportError as missing:
    raise SystemExit(f"onnx_predict.py needs the onnxruntime package ({missing}); run deploy/setup-libtorch.sh")


def main():
    model, *paths = sys.argv[1:]
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    spec = json.loads(session.get_modelmeta().custom_metadata_map["trainq_spec"])
    inputs = {path: network_input(spec, path) for path in paths}
    rows = {}
    for shape in {x.shape for x in inputs.values()}:
        batch = [path for path in paths if inputs[path].shape == shape]
        (probabilities,) = session.run(["probabilities"], {"pixels": np.stack([inputs[path] for path in batch])})
        rows.update(zip(batch, probabilities))
    for path in paths:
        print(path + "\t" + "\t".join(f"{p:.8f}" for p in rows[path]))


if __name__ == "__main__":
    main()
