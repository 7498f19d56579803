"""Prompt-adherence scoring on a procedural world of shapes (numpy only: runtime side, no Paddle, torch or onnx).

world.py draws and parses scenes, scorer.py reads images back, promptsets.py holds the shipped prompt
lists, evaluate.py runs a bundle over prompts and seeds and scores every image.
"""
