"""Model families and the training layer (imported as ``rppg_models``)."""
