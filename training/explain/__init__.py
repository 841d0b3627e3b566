"""See inside a trained model: attention maps, logit lens, saliency, step-by-step prediction.

    python -m training.explain --run runs/default --prompt "ROMEO:" --out reports/explain

introspect.py holds the maths, figures.py the pictures, page.py/sections.py the HTML,
report.py ties them together, __main__.py is the command line.
"""
