"""The stream worker: decode -> state -> batch -> model -> publish -> commit, one module per stage."""
