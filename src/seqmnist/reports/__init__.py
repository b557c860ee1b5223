"""What a person reads: the comparison report (report.py), the look inside a model
(explainer.py, explain_html.py, dataset_view.py), and exports (export.py: ONNX, model cards)."""
