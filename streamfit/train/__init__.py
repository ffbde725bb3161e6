"""Training by streaming passes: refinement, Newton, subspaces, growth."""
