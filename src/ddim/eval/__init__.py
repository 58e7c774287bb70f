"""The paper's experiments: Fréchet distances, Tables 1 and 2, consistency, reports."""
