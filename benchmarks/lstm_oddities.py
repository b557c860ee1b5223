"""Two oddities reported while planning the speed work: epoch time against batch size, and one
two-layer nn.LSTM against two one-layer modules (forward + backward, seconds per 60,000 images).

    python benchmarks/lstm_oddities.py
"""

import time

import torch
from torch import nn


def seconds_per_call(fn, n: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


class TwoModules(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.LSTM(28, 50, batch_first=True)
        self.l2 = nn.LSTM(50, 50, batch_first=True)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return self.l2(self.drop(self.l1(x)[0]))[0][:, -1]


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(28, 50, num_layers=2, dropout=0.2, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0][:, -1]


def main() -> None:
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for batch in (64, 128, 256, 512):
            x = torch.rand(batch, 28, 28)
            epoch = []
            for cls in (TwoModules, TwoLayers):
                model = cls()

                def step(model=model, x=x):
                    model.zero_grad()
                    model(x).sum().backward()
                epoch.append(seconds_per_call(step, max(10, 3000 // batch)) * 60000 / batch)
            print(f"threads {threads} batch {batch}: two modules {epoch[0]:.1f} s/epoch, "
                  f"num_layers=2 {epoch[1]:.1f} s/epoch", flush=True)


if __name__ == "__main__":
    main()
