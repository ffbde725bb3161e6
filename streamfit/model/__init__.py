"""Models: weights files, scoring, evaluate and predict."""
