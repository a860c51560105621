"""retrain: event-driven GPU retraining on Google Cloud (the functions' core package)."""
