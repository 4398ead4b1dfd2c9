"""Third-party internals behind one module per library; each function fails loudly when an internal changed."""
