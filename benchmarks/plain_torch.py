""""PyTorch as usually written": the tutorial's networks in the style of the PyTorch examples
(DataLoader over a TensorDataset, default initialisation, fp32, two one-layer nn.LSTM modules).

    python plain_torch.py lstm --epochs 1 --data DIR   # prints one JSON line
"""

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from keras_tutorial import read_idx
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm1 = nn.LSTM(28, 50, batch_first=True)
        self.lstm2 = nn.LSTM(50, 50, batch_first=True)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(50, 10)

    def forward(self, x):
        x = self.dropout(self.lstm1(x)[0])
        x = self.dropout(self.lstm2(x)[0][:, -1])
        return self.fc(x)


class CNNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(7 * 7 * 64, 1024)
        self.fc2 = nn.Linear(1024, 10)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = self.dropout(torch.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=["lstm", "cnn"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data", type=Path, required=True)
    args = p.parse_args()
    t_start = time.perf_counter()
    shape = (-1, 28, 28) if args.model == "lstm" else (-1, 1, 28, 28)

    def tensors(split):
        x = torch.tensor(read_idx(args.data / f"{split}-images-idx3-ubyte.gz")[: args.limit])
        y = torch.tensor(read_idx(args.data / f"{split}-labels-idx1-ubyte.gz")[: args.limit])
        return x.float().div(255).reshape(shape), y.long()

    train_loader = DataLoader(TensorDataset(*tensors("train")), batch_size=args.batch_size,
                              shuffle=True)
    test_loader = DataLoader(TensorDataset(*tensors("t10k")), batch_size=1000)
    model = LSTMNet() if args.model == "lstm" else CNNNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 if args.model == "lstm" else 1e-4)
    seconds = []
    for _ in range(args.epochs):
        model.train()
        t = time.perf_counter()
        for x, y in train_loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - t)
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += (model(x).argmax(1) == y).sum().item()
    print(json.dumps(dict(
        impl="plain-torch", model=args.model, epochs=args.epochs, epoch_seconds=seconds,
        test_accuracy=correct / len(test_loader.dataset),
        wall_seconds=time.perf_counter() - t_start,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        versions=dict(torch=torch.__version__))))


if __name__ == "__main__":
    main()
