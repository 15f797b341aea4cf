"""PyTorch's side of the training-speed comparison (bench/peers.sh): CancerNet, batch 32,
in-memory random tensors, Adagrad (Keras' accumulator 0.1, eps 1e-7), training mode, as many
threads as cores. Prints images/s over STEPS timed steps after a warm-up.

Usage: train_pytorch.py [STEPS]
"""
import os
import sys
import time

import torch
from torch import nn

from cancernet_torch import CancerNet

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 50
torch.manual_seed(0)
torch.set_num_threads(os.cpu_count())
batch = 32
net = CancerNet().train()
opt = torch.optim.Adagrad(net.parameters(), lr=1e-2, initial_accumulator_value=0.1, eps=1e-7)
loss_fn = nn.CrossEntropyLoss()
x = torch.rand(batch, 3, 48, 48)
y = torch.arange(batch) % 2


def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()


for _ in range(5):
    step()
t = time.perf_counter()
for _ in range(steps):
    step()
dt = time.perf_counter() - t
print(f"pytorch {torch.__version__}: CancerNet training step, batch {batch}, {torch.get_num_threads()} threads, {steps} steps")
print(f"  {1000 * dt / steps:8.1f} ms/step  {batch * steps / dt:8.1f} img/s")
