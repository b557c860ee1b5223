"""Speed behind one seam: the backend that computes a model's layers (backends.py: torch or
seqmnist's native LSTM kernel, chosen once and installed onto the model) and the compiled kernel
itself (lstm_kernel.py, csrc/). The models describe networks; they never know which kernel runs."""
