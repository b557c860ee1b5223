"""The tutorial's own Keras code (../shared/seed/), timed. Runs in its own virtual environment
with tensorflow-cpu (benchmarks/run.py makes it); reads the same IDX files as seqmnist.

    python keras_tutorial.py lstm --epochs 1 --data DIR   # prints one JSON line
"""

import argparse
import gzip
import json
import resource
import time
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=["lstm", "cnn"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--data", type=Path, required=True)
    args = p.parse_args()
    t_start = time.perf_counter()

    import tensorflow as tf
    from tensorflow.keras.layers import LSTM, Convolution2D, Dense, Dropout, Flatten, MaxPooling2D
    from tensorflow.keras.models import Sequential
    from tensorflow.keras.optimizers import Adam

    x_train = read_idx(args.data / "train-images-idx3-ubyte.gz")[: args.limit]
    y_train = read_idx(args.data / "train-labels-idx1-ubyte.gz")[: args.limit]
    x_test = read_idx(args.data / "t10k-images-idx3-ubyte.gz")
    y_test = read_idx(args.data / "t10k-labels-idx1-ubyte.gz")
    x_train, x_test = x_train / 255.0, x_test / 255.0
    y_train = tf.keras.utils.to_categorical(y_train, num_classes=10)
    y_test = tf.keras.utils.to_categorical(y_test, num_classes=10)

    # The tutorial's code, unchanged but for `learning_rate` (Keras 3 dropped `lr`).
    if args.model == "lstm":
        model = Sequential([
            tf.keras.Input((28, 28)),
            LSTM(units=50, return_sequences=True),
            Dropout(0.2),
            LSTM(50),
            Dropout(0.2),
            Dense(10, activation=tf.keras.activations.softmax),
        ])
        lr = 1e-3
    else:
        x_train, x_test = x_train.reshape(-1, 28, 28, 1), x_test.reshape(-1, 28, 28, 1)
        model = Sequential([
            tf.keras.Input((28, 28, 1)),
            Convolution2D(filters=32, kernel_size=5, strides=1, padding="same", activation="relu"),
            MaxPooling2D(pool_size=2, strides=2, padding="same"),
            Convolution2D(64, 5, strides=1, padding="same", activation="relu"),
            MaxPooling2D(2, 2, "same"),
            Flatten(),
            Dense(1024, activation="relu"),
            Dropout(0.5),
            Dense(10, activation="softmax"),
        ])
        lr = 1e-4
    model.compile(optimizer=Adam(learning_rate=lr), loss="categorical_crossentropy",
                  metrics=["accuracy"])

    class Timer(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.t_end = time.perf_counter()  # end of the last batch: validation excluded

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(self.t_end - self.t)

    seconds: list[float] = []
    history = model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=0,
                        validation_data=(x_test, y_test), callbacks=[Timer()])
    print(json.dumps(dict(
        impl="keras", model=args.model, epochs=args.epochs, epoch_seconds=seconds,
        test_accuracy=float(history.history["val_accuracy"][-1]),
        wall_seconds=time.perf_counter() - t_start,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        versions=dict(tensorflow=tf.__version__, keras=tf.keras.__version__))))


if __name__ == "__main__":
    main()
