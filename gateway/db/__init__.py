"""Storage: the engine, the models and the migrations runner."""
