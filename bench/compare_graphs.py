"""Graph against graph: the ONNX file `exporter` writes against PyTorch's own export of the same
CancerNet with the same weights, run by the same onnxruntime (CPU) on the same inputs.

Usage: compare_graphs.py OURS.onnx OUT_TORCH.onnx [BATCH ...]
Copies OURS' weights into bench/cancernet_torch.py's model, exports it with torch.onnx.export
(opset 17, dynamic batch, OURS' metadata copied so `runtime` can run it too), checks that both
graphs give the same probabilities, then times pure inference of both, alternating rounds.
"""
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from cancernet_torch import CancerNet, WithSoftmax

ours_path, torch_path = sys.argv[1], sys.argv[2]
batches = [int(b) for b in sys.argv[3:]] or [256, 32]
ours = onnx.load(ours_path)
weights = {i.name: numpy_helper.to_array(i) for i in ours.graph.initializer}

net = CancerNet().eval()
convs = [m for m in net.features if hasattr(m, "depthwise")]
bns = [m for m in net.features if isinstance(m, torch.nn.BatchNorm2d)]
names = [f"block{b}.sepconv{u}" for b, d in enumerate([1, 2, 3], 1) for u in range(1, d + 1)]
state = {}
with torch.no_grad():
    for sep, bn, name in zip(convs, bns, names):
        sep.depthwise.weight.copy_(torch.from_numpy(weights[f"{name}.depthwise.weight"]))
        sep.pointwise.weight.copy_(torch.from_numpy(weights[f"{name}.pointwise.weight"]))
        sep.pointwise.bias.copy_(torch.from_numpy(weights[f"{name}.pointwise.bias"]))
        b = name.replace("sepconv", "bn")
        bn.weight.copy_(torch.from_numpy(weights[f"{b}.scale"]))
        bn.bias.copy_(torch.from_numpy(weights[f"{b}.bias"]))
        bn.running_mean.copy_(torch.from_numpy(weights[f"{b}.running_mean"]))
        bn.running_var.copy_(torch.from_numpy(weights[f"{b}.running_var"]))
    dense, dense_bn, head = net.classifier[1], net.classifier[3], net.classifier[5]
    # PyTorch's Linear holds [out, in], as the Gemm with transB = 1 does; [in, out] without it.
    trans_b = {n.name: any(a.name == "transB" and a.i == 1 for a in n.attribute) for n in ours.graph.node}
    for name, layer in [("dense", dense), ("head", head)]:
        w = weights[f"{name}.weight"]
        layer.weight.copy_(torch.from_numpy(w if trans_b[name] else w.T.copy()))
    dense.bias.copy_(torch.from_numpy(weights["dense.bias"]))
    head.bias.copy_(torch.from_numpy(weights["head.bias"]))
    if "dense_bn.scale" in weights:
        dense_bn.weight.copy_(torch.from_numpy(weights["dense_bn.scale"]))
        dense_bn.bias.copy_(torch.from_numpy(weights["dense_bn.bias"]))
        dense_bn.running_mean.copy_(torch.from_numpy(weights["dense_bn.running_mean"]))
        dense_bn.running_var.copy_(torch.from_numpy(weights["dense_bn.running_var"]))
    else:
        # The exporter folded this BatchNorm into the head: make PyTorch's the identity.
        dense_bn.weight.fill_(1.0)
        dense_bn.bias.zero_()
        dense_bn.running_mean.zero_()
        dense_bn.running_var.fill_(1.0 - dense_bn.eps)

model = WithSoftmax(net).eval()
example = torch.rand(2, 3, 48, 48)
torch.onnx.export(
    model,
    (example,),
    torch_path,
    input_names=["image"],
    output_names=["probabilities"],
    dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
    opset_version=17,
    dynamo=False,
)
exported = onnx.load(torch_path)
for prop in ours.metadata_props:
    exported.metadata_props.add(key=prop.key, value=prop.value)
onnx.save(exported, torch_path)
onnx.checker.check_model(exported, full_check=True)


def ops(m):
    counts = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


print(f"ours:    {len(ours.graph.node)} nodes ({ops(ours)})")
print(f"pytorch: {len(exported.graph.node)} nodes ({ops(exported)}), torch {torch.__version__}")

sessions = {
    "ours": ort.InferenceSession(ours_path, providers=["CPUExecutionProvider"]),
    "pytorch": ort.InferenceSession(torch_path, providers=["CPUExecutionProvider"]),
}
x = np.random.default_rng(0).random((64, 3, 48, 48), dtype=np.float32)
p = {k: s.run(["probabilities"], {"image": x})[0] for k, s in sessions.items()}
with torch.no_grad():
    p_torch = model(torch.from_numpy(x)).numpy()
print(f"max |ours - pytorch graph| = {np.abs(p['ours'] - p['pytorch']).max():.2e}, "
      f"|ours - pytorch eager| = {np.abs(p['ours'] - p_torch).max():.2e}")

print(f"pure inference, onnxruntime {ort.__version__} CPU, images/s (best of 5 alternating rounds):")
for batch in batches:
    xb = np.random.default_rng(1).random((batch, 3, 48, 48), dtype=np.float32)
    best = {k: 0.0 for k in sessions}
    for _ in range(5):
        for k, s in sessions.items():
            s.run(["probabilities"], {"image": xb})
            t, done = time.perf_counter(), 0
            while done < 4096:
                s.run(["probabilities"], {"image": xb})
                done += batch
            best[k] = max(best[k], done / (time.perf_counter() - t))
    ratio = best["ours"] / best["pytorch"]
    print(f"  batch {batch:4d}: ours {best['ours']:8.0f}  pytorch {best['pytorch']:8.0f}  ours/pytorch {ratio:.2f}")
