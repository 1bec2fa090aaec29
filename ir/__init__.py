"""effc IR: types, core data structures, op registry, text form, verifier, interpreter."""
