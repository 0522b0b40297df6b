"""What a researcher would write instead of the template: plain Lightning, raw PyTorch, FastAPI."""
