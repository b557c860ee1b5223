"""What runs are worth: a run evaluated again on its test set (evaluate.py), user images
answered (predict.py), groups of seeds compared with intervals and paired tests (analysis.py), and
the published numbers they stand beside (published.py)."""
