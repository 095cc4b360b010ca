#!/usr/bin/env python3
"""Checks an exported ONNX file against `steadygrad predict`, outside the Rust tests.

Needs onnx, onnxruntime and numpy (`pip install numpy onnx onnxruntime`). Runs
`onnx.checker.check_model(full_check=True)` (IR version, opset, shape inference), then
onnxruntime on the raw features of a CSV file, and compares with the CSV `predict`
wrote for the same file:

  steadygrad predict --checkpoint m.safetensors --data test.csv --label-column label --out pred.csv
  steadygrad export --checkpoint m.safetensors --onnx m.onnx
  scripts/check_onnx.py m.onnx test.csv pred.csv [LABEL_COLUMN]

Every column of test.csv except the label column (default `label`) is a feature, in
file order. Exits non-zero when a value differs by more than 1e-5·(1 + |predict|) or a
class differs.
"""
import csv
import sys

import numpy as np
import onnx
import onnxruntime as ort

model_path, data_csv, pred_csv = sys.argv[1:4]
label = sys.argv[4] if len(sys.argv) > 4 else "label"
m = onnx.load(model_path)
onnx.checker.check_model(m, full_check=True)
opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in m.opset_import)
ops = ", ".join(sorted({n.op_type for n in m.graph.node}))
print(f"{model_path}: checker passed; IR {m.ir_version}, opset {opsets}; {ops}")

with open(data_csv) as f:
    rows = list(csv.DictReader(f))
features = [k for k in rows[0] if k != label]
x = np.array([[float(r[k]) for k in features] for r in rows], dtype=np.float32)
with open(pred_csv) as f:
    pred = list(csv.DictReader(f))
columns = [k for k in pred[0] if k.startswith("output_")]
want = np.array([[float(r[k]) for k in columns] for r in pred], dtype=np.float32)

session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
got = session.run(None, {"features": x})
err = float((np.abs(got[0] - want) / (1 + np.abs(want))).max())
print(f"{len(x)} rows: largest relative difference from predict {err:.3g}")
ok = err <= 1e-5
if "class" in pred[0]:
    classes = np.array([int(r["class"]) for r in pred])
    same = bool((got[1] == classes).all())
    print(f"classes {'agree' if same else 'DIFFER'}")
    ok = ok and same
sys.exit(0 if ok else 1)
